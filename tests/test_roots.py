"""Zoo roots: user paths resolve only inside them, messages reveal nothing outside, manifests cannot reach out."""
import json
import os

import pytest

from merging.roots import RootError, Roots


@pytest.fixture
def roots(tmp_path):
    (tmp_path / "zoos" / "mine").mkdir(parents=True)
    (tmp_path / "zoos" / "mine" / "zoo.json").write_text("{}")
    (tmp_path / "demo").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.json").write_text('{"aws_secret_access_key": 1}')
    return Roots([tmp_path / "demo", tmp_path / "zoos"])


def test_paths_resolve_by_label_relative_or_absolute_inside_the_roots(roots, tmp_path):
    mine = (tmp_path / "zoos" / "mine").resolve()
    assert roots.resolve("zoos/mine") == mine
    assert roots.resolve("mine") == mine  # relative to a root
    assert roots.resolve(str(mine / "zoo.json")) == mine / "zoo.json"
    assert roots.resolve("zoos") == (tmp_path / "zoos").resolve()
    assert roots.display(mine / "zoo.json") == "zoos/mine/zoo.json"
    assert roots.redact(f"{mine}/zoo.json: bad") == "zoos/mine/zoo.json: bad"


@pytest.mark.parametrize("text", ["/etc", "/no/such/folder", "/etc/shadow", "../outside", "../outside/secret.json",
                                  "zoos/../../outside", "/proc/self/environ", "/proc/self/cwd"])
def test_outside_paths_get_one_message_whether_or_not_they_exist(roots, text):
    with pytest.raises(RootError) as caught:
        roots.resolve(text)
    message = str(caught.value)
    assert message == f"{text!r} is not inside the zoo roots (demo, zoos)"
    assert "secret" not in message.replace(text, "") and "aws" not in message


def test_nothing_is_expanded(roots, tmp_path):
    with pytest.raises(RootError) as caught:
        roots.resolve("~/.ssh")
    assert os.path.expanduser("~") not in str(caught.value) and "'demo/~/.ssh'" in str(caught.value)
    with pytest.raises(RootError, match="^give a zoo folder"):
        roots.resolve("  ")


def test_a_symlink_out_of_a_root_is_outside(roots, tmp_path):
    (tmp_path / "zoos" / "escape").symlink_to(tmp_path / "outside")
    with pytest.raises(RootError, match="not inside the zoo roots"):
        roots.resolve("zoos/escape/secret.json")
    with pytest.raises(RootError, match="^zoos: escape links outside the zoo roots$"):
        roots.check_tree(tmp_path / "zoos")


@pytest.mark.parametrize("field, value", [("pretrained", "/etc/shadow"), ("pretrained", "../../outside/secret.json"),
                                          ("finetuned", "/no/such/file"), ("head", "../../outside/secret.json"),
                                          ("data", "/etc")])
def test_a_manifest_referencing_outside_paths_is_refused_before_it_is_parsed(roots, tmp_path, field, value):
    task = {"name": "a", "finetuned": "a.safetensors"}
    manifest = {"pretrained": "pretrained.safetensors", "tasks": [task]}
    if field == "pretrained":
        manifest["pretrained"] = value
    elif field == "finetuned":
        task["finetuned"] = value
    elif field == "head":
        task["head"] = {"weights": value}
    else:
        task["data"] = {"val": {"imagefolder": value}}
    (tmp_path / "zoos" / "mine" / "zoo.json").write_text(json.dumps(manifest))
    with pytest.raises(RootError) as caught:
        roots.check_manifest(tmp_path / "zoos" / "mine")
    message = str(caught.value)
    assert message.startswith("zoos/mine/zoo.json: ") and "not inside the zoo roots" in message
    assert value not in message and str(tmp_path) not in message

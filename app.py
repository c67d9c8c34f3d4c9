"""mergescope dashboard: ``python app.py`` serves http://127.0.0.1:7860 on the built-in demo zoo.

Flags (or environment variables): --host (MERGESCOPE_HOST, default 127.0.0.1: this machine only), --port
(MERGESCOPE_PORT, 7860), --zoo (MERGESCOPE_ZOO, default assets/demo-zoo), --zoo-root (repeatable;
MERGESCOPE_ZOO_ROOTS, separated by ':'; the only folders the Load-zoo path box and zoo manifests may reach; default
the demo zoo and <data-dir>/zoos; the --zoo folder always is one), --data-dir (MERGESCOPE_DATA, run history,
uploads and downloads; default ~/.cache/mergescope), --device (MERGESCOPE_DEVICE: auto, cpu, cuda), --gpu-slots
(MERGESCOPE_GPU_SLOTS: jobs running at once, default 1), --jobs-per-session (MERGESCOPE_JOBS_PER_SESSION: queued or
running jobs one visitor may have, default 2), --threads (MERGESCOPE_THREADS: CPU threads for torch, default all
cores but one, which is left to the web server: on 2 cores, 2 intra-op threads make the demo's tiny ops stall
behind the server's work), --upload-limit-mb (MERGESCOPE_UPLOAD_LIMIT_MB, default 2048), --auth USER:PASSWORD
(repeatable; MERGESCOPE_AUTH, comma-separated) and --auth-file (MERGESCOPE_AUTH_FILE, one USER:PASSWORD a line):
a login page (Gradio auth); runs then belong to the login name instead of the browser tab.
"""
import argparse
import os
import shutil
from pathlib import Path

DEMO_ZOO = Path(__file__).resolve().parent / "assets" / "demo-zoo"


def parse_args(argv=None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=env("MERGESCOPE_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("MERGESCOPE_PORT", "7860")))
    parser.add_argument("--zoo", default=env("MERGESCOPE_ZOO", str(DEMO_ZOO)),
                        help="zoo folder or zoo.json opened at start ('' for none)")
    parser.add_argument("--zoo-root", action="append", dest="zoo_roots",
                        default=[p for p in env("MERGESCOPE_ZOO_ROOTS", "").split(os.pathsep) if p] or None,
                        help="a folder zoos may be opened from (repeatable)")
    parser.add_argument("--data-dir", default=env("MERGESCOPE_DATA", str(Path.home() / ".cache" / "mergescope")))
    parser.add_argument("--device", default=env("MERGESCOPE_DEVICE", "auto"))
    parser.add_argument("--gpu-slots", type=int, default=int(env("MERGESCOPE_GPU_SLOTS", "1")))
    parser.add_argument("--jobs-per-session", type=int, default=int(env("MERGESCOPE_JOBS_PER_SESSION", "2")))
    parser.add_argument("--threads", type=int,
                        default=int(env("MERGESCOPE_THREADS", str(max(1, len(os.sched_getaffinity(0)) - 1)))))
    parser.add_argument("--upload-limit-mb", type=float, default=float(env("MERGESCOPE_UPLOAD_LIMIT_MB", "2048")))
    parser.add_argument("--auth", action="append", metavar="USER:PASSWORD",
                        default=[a for a in env("MERGESCOPE_AUTH", "").split(",") if a] or None)
    parser.add_argument("--auth-file", default=env("MERGESCOPE_AUTH_FILE"))
    args = parser.parse_args(argv)
    if args.jobs_per_session < 1:
        parser.error("--jobs-per-session: at least 1")
    try:
        args.logins = logins(args.auth or [], args.auth_file)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def logins(pairs, auth_file=None) -> list[tuple[str, str]] | None:
    """(user, password) pairs from USER:PASSWORD items and a file of them (blank and # lines skipped)."""
    items = [(str(p), f"--auth item {i + 1}") for i, p in enumerate(pairs)]
    if auth_file:
        try:
            lines = Path(auth_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ValueError(f"--auth-file {auth_file}: {exc.strerror or exc}") from None
        items += [(line.strip(), f"--auth-file line {n}") for n, line in enumerate(lines, 1)
                  if line.strip() and not line.lstrip().startswith("#")]
    out = []
    for item, where in items:
        user, sep, password = item.partition(":")
        if not sep or not user.strip() or not password:
            raise ValueError(f"{where}: expected USER:PASSWORD")
        out.append((user.strip(), password))
    return out or None


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    data_dir = Path(args.data_dir)
    if "GRADIO_TEMP_DIR" not in os.environ:  # uploads and downloads in our own folder, emptied at every start
        temp = data_dir / "gradio-tmp"
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir(parents=True)
        os.environ["GRADIO_TEMP_DIR"] = str(temp)
    import merging  # noqa: F401  (before torch: it turns on the CPU allocator's huge pages)
    import torch

    from dashboard.service import Settings, zoos_folder
    from dashboard.ui import create_app, launch

    torch.set_num_threads(args.threads)
    # command-line paths are the shell's, relative to the working folder (the app's own path box is root-relative)
    zoo = str(Path(args.zoo).resolve()) if args.zoo and Path(args.zoo).exists() else None
    if args.zoo and zoo is None:
        print(f"mergescope: zoo {args.zoo} not found; starting without one (load a zoo in the app)")
    roots = args.zoo_roots or [DEMO_ZOO, zoos_folder(data_dir)]
    settings = Settings(data_dir, device=args.device, upload_limit=int(args.upload_limit_mb * 2**20),
                        zoo_roots=[Path(r).resolve() for r in roots], jobs_per_session=args.jobs_per_session)
    demo = create_app(settings, zoo, slots=args.gpu_slots)
    launch(demo, args.host, args.port, auth=args.logins)


if __name__ == "__main__":
    main()

"""The command lines' progress printer: one line rewritten in place on a terminal, throttled lines in a log."""
import io

from merging.progress import TerminalProgress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_whole_lines_throttled_and_the_last_one():
    clock = iter([0.0, 1.0, 6.0, 7.0, 7.5])
    log = io.StringIO()
    show = TerminalProgress(log, every=5.0, clock=lambda: next(clock))
    for i, stage in enumerate(["a", "b", "c", "d"]):
        show(i / 4, stage)
    show(1.0, "done")
    assert "\r" not in log.getvalue()
    assert log.getvalue().splitlines() == ["[  0.0%] a", "[ 50.0%] c", "[100.0%] done"]


def test_a_terminal_gets_one_line_rewritten():
    screen = Terminal()
    show = TerminalProgress(screen)
    show(0.5, "half")
    show(1.0, "done")
    assert screen.getvalue().count("\r") == 2 and screen.getvalue().endswith("\n")
    assert screen.getvalue().count("\n") == 1

"""`wattshare meter deploy`: its progress bar and its refusals. The deploy onto a blank
virtual board, then of only what changed, is in test_installer.py (its boards share one
deploy)."""

import io

from tools import cli
from tools.meter_deploy import Progress


def test_a_progress_bar_on_a_terminal(tmp_path):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    bar = Progress(4096, out)
    bar.file("lib/app/x.mpy", 4096)
    bar.advance(1024)
    bar.advance(3072)
    bar.end()
    text = out.getvalue()
    assert "\r  [#######.......................]    1.0/4.0 KB lib/app/x.mpy" in text
    assert text.endswith("4.0/4.0 KB lib/app/x.mpy" + " " * 27 + "\n")


def test_deploy_refuses_a_missing_port(tmp_path, capsys):
    assert cli.main(["meter", "deploy", "--port", str(tmp_path / "ttyUSB0")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("wattshare: error: ") and "no such serial port" in err
    assert "Traceback" not in err

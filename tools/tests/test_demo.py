"""`make demo` in a shortened form (four members, 10:00-12:00 of the simulated day) in a
temporary work folder (the user's out/demo is left alone): the report is checked against
the chain (energy and tokens conserved, the school received the resident's share
whenever it had demand, the sampled proofs verify), the live community page and the
offline report.html are looked at in headless Chromium, and Ctrl-C stops every process
the demo started."""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import date
from pathlib import Path

import pytest

from gateway.chain import contracts, ledger, rpc
from gateway.chain.errors import RpcError
from tools import demo

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "gateway" / "tests" / "community_page.mjs"
SCREENSHOTS = REPO / "out" / "screenshots"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
STATIC_BPS = 4000  # the resident's key: 40 % to the school


class Running:
    def __init__(self, work):
        self.work = work
        self.lines = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.demo", "--work", str(work), "--street", "small",
             "--from", "10:00", "--to", "12:00", "--proofs", "6", "--serve"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=dict(os.environ, TERM="xterm"))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, pattern, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, "".join(self.lines))
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(f"no {pattern!r} in the demo's output:\n{''.join(self.lines)}")


def _our_processes(work):
    """Processes whose command line names the work folder (the demo's children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(work) in cmdline and "pytest" not in cmdline:
                found.append((int(entry.name), cmdline))
    return found


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo") / "work"
    r = Running(work)
    try:
        r.url = r.wait_for(r"serving the community page at (\S+) until Ctrl-C", 400).group(1)
        yield r
    finally:
        r.proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            r.code = r.proc.wait(60)
        finally:
            if r.proc.poll() is None:
                r.proc.kill()


@pytest.fixture(scope="module")
def report(run):
    return json.loads((run.work / "report.json").read_text())


def _members(run):
    out = subprocess.run([sys.executable, "-m", "tools.cli", "community", "members", "--json",
                          "--config", str(run.work / "gateway" / "gateway.toml")],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    return {m["name"]: m for m in json.loads(out)}


@pytest.mark.slow
def test_report_agrees_with_the_chain(run, report):
    assert set(report) == {"members", "flows", "intervals", "proofs", "chain"}
    keys = {"name", "produced_wh", "consumed_wh", "p2p_sent_wh", "p2p_received_wh",
            "grid_import_wh", "grid_export_wh", "tokens_paid", "tokens_earned"}
    assert all(set(m) == keys for m in report["members"])
    assert all(set(f) == {"from", "to", "wh", "tokens"} for f in report["flows"])
    assert all(set(i) == {"interval", "tx"} for i in report["intervals"])
    assert set(report["chain"]) == {"rpc", "contracts"}
    members = {m["name"]: m for m in report["members"]}
    assert set(members) == {m.label for m in demo.STREETS["small"]}

    port = rpc.Web3Chain.connect(report["chain"]["rpc"], 31337)
    settlement = report["chain"]["contracts"]["settlement"]
    ks = [i["interval"] for i in report["intervals"]]
    chain = ledger.read_intervals(port, settlement, min(ks), max(ks))
    assert sorted(chain) == sorted(ks) and len(ks) >= 8  # 10:00-12:00 at least
    # energy: the report's totals are the chain's, and conserved per member
    assert sum(m["consumed_wh"] for m in members.values()) == sum(
        s.import_wh for s in chain.values())
    assert sum(m["produced_wh"] for m in members.values()) == sum(
        s.export_wh for s in chain.values())
    for m in members.values():
        assert m["p2p_received_wh"] + m["grid_import_wh"] == m["consumed_wh"]
        assert m["p2p_sent_wh"] + m["grid_export_wh"] == m["produced_wh"]
    assert sum(m["p2p_sent_wh"] for m in members.values()) == sum(
        m["p2p_received_wh"] for m in members.values()) == sum(
        s.p2p_wh for s in chain.values()) > 0
    flows = report["flows"]
    into_pool = sum(f["wh"] for f in flows if f["to"] == "community pool")
    out_of_pool = sum(f["wh"] for f in flows if f["from"] == "community pool")
    assert into_pool == out_of_pool
    # tokens: paid by consumers = earned by producers = what the chain settled, and
    # the members' prepaid balances moved by exactly that
    paid = sum(m["tokens_paid"] for m in members.values())
    assert paid == sum(m["tokens_earned"] for m in members.values()) == sum(
        s.tokens for s in chain.values()) > 0
    accounts = _members(run)
    for name, m in members.items():
        state = ledger.account_state(port, settlement, accounts[name]["owner"])
        assert state["balance"] == 1000 * 10**18 - m["tokens_paid"] + m["tokens_earned"]
        assert state["debt"] == 0
    # each interval's transaction settled it
    for i in report["intervals"]:
        assert chain[i["interval"]].tx_hash == i["tx"]


@pytest.mark.slow
def test_the_school_got_the_residents_share_whenever_it_had_demand(run, report):
    port = rpc.Web3Chain.connect(report["chain"]["rpc"], 31337)
    accounts = _members(run)
    resident = accounts[demo.RESIDENT.label]["index"]
    school = accounts[demo.SCHOOL.label]["index"]
    settlement = report["chain"]["contracts"]["settlement"]
    ks = [i["interval"] for i in report["intervals"]]
    chain = ledger.read_intervals(port, settlement, min(ks), max(ks))
    checked = 0
    for i in report["intervals"]:
        tx = port.request("eth_getTransactionByHash", [i["tx"]])
        first, _root, _anchors, per = contracts.decode_submit(bytes.fromhex(tx["input"][2:]))
        k = i["interval"]
        assert first <= k < first + len(per)  # the submission of several intervals holds it
        submitted = {m: (imp, exp) for m, imp, exp in per[k - first]}
        if resident not in submitted or school not in submitted:
            continue  # a gap: nothing of theirs was settled in this interval
        export, demand = submitted[resident][1], submitted[school][0]
        given = sum(f.wh for f in chain[k].flows
                    if f.kind == "p2p" and (f.source, f.target) == (resident, school))
        assert given == min(export * STATIC_BPS // 10_000, demand), (k, export, demand)
        checked += export > 0 and demand > 0
    assert checked >= 4  # a sunny late morning: most intervals


@pytest.mark.slow
def test_sampled_proofs_verify(run, report):
    assert report["proofs"]["total"] >= 4
    assert report["proofs"]["verified"] == report["proofs"]["total"]
    bundles = sorted((run.work / "proofs").glob("reading-*.json"))
    assert len(bundles) == report["proofs"]["total"]
    out = subprocess.run([sys.executable, "-m", "tools.cli", "verify", "--bundle",
                          str(bundles[-1]), "--rpc", report["chain"]["rpc"]],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and "VALID" in out.stdout


def _kwh2(wh):
    # as the page's Sankey labels a node: whole Wh to kWh, two decimals, half up
    return f"{(wh + 5) // 10 / 100:.2f} kWh"


def _browse(url, screenshot):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make setup` (it installs Debian's chromium)")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["node", str(SCRIPT), url, str(screenshot)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _check_page(page, report):
    assert page["errors"] == [] and page["error"] is None and page["ready"]
    assert page["externalRequests"] == []  # nothing from the network
    names = [m["name"] for m in report["members"]]
    for m in report["members"]:
        if m["consumed_wh"]:
            assert f"{m['name']}  {_kwh2(m['consumed_wh'])}" in page["sankeyText"]
        if m["produced_wh"]:
            assert f"{m['name']}  {_kwh2(m['produced_wh'])}" in page["sankeyText"]
    assert [r[0].split("\n")[0] for r in page["members"]] == names
    assert all(n in page["membersChartText"] for n in names)
    timeline = page["series"]["timeline"]
    assert len(timeline) == 4 and all(s["points"] == len(report["intervals"]) for s in timeline)
    assert all(w > 600 and h > 200 for w, h in page["svgSizes"])


@pytest.mark.slow
def test_live_community_page_in_a_browser(run, report):
    page = _browse(run.url, SCREENSHOTS / "demo-community-page.png")
    assert page["status"] == 200
    _check_page(page, report)
    assert report["chain"]["rpc"] in page["verifyCommand"]


@pytest.mark.slow
def test_report_html_opens_offline_in_a_browser(run, report):
    page = _browse((run.work / "report.html").as_uri(), SCREENSHOTS / "demo-report.png")
    _check_page(page, report)
    assert len(page["proofLinks"]) == report["proofs"]["total"]  # bundles inside the file


@pytest.mark.slow
def test_terminal_output_and_ctrl_c_cleanup(run, report):
    text = "".join(run.lines)
    assert "\x1b" not in text and "\r" not in text  # not a terminal: plain lines
    day = demo.demo_day()
    assert re.search(rf"community page: http://127\.0\.0\.1:\d+/community\?date={day}", text)
    assert re.search(rf"sim {day} 1\d:\d\d UTC \| readings [\d,]+ \| intervals settled "
                     r"\d+/8", text)
    assert "6 of 6 sampled proofs verify" in text
    assert "the school received" in text and "Rue des Lilas" in text
    # Ctrl-C (the fixture's teardown) is checked in the last test of the module
    run.proc.send_signal(signal.SIGINT)
    assert run.proc.wait(60) == 130
    time.sleep(0.5)
    assert "interrupted: every process it started is stopped" in "".join(run.lines)
    assert _our_processes(run.work) == []
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(run.url, timeout=2)
    with pytest.raises(RpcError):
        rpc.Web3Chain.connect(report["chain"]["rpc"], 31337, request_timeout=2)


@pytest.mark.parametrize("today, day", [
    ("2026-12-06", "2027-06-15"), ("2027-06-13", "2027-06-15"), ("2027-06-14", "2028-06-20"),
    ("2028-01-01", "2028-06-20")])
def test_the_simulated_day_is_a_june_tuesday_still_ahead(today, day):
    assert demo.demo_day(date.fromisoformat(today)) == day
    assert date.fromisoformat(day).weekday() == 1 and day > today


def test_the_work_folder_is_wiped_only_if_a_demo_made_it(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("precious")
    assert demo.main(["--work", str(foreign)]) == 1
    assert "was not made by the demo" in capsys.readouterr().out
    assert (foreign / "thesis.txt").read_text() == "precious"
    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / demo.MARKER).write_text("")
    (previous / "old.log").write_text("old run")
    d = demo.Demo(argparse.Namespace(work=previous, street="small"), demo.Screen())
    d.prepare_work()
    assert not (previous / "old.log").exists() and (previous / demo.MARKER).exists()

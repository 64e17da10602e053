"""B7: what an idle fleet costs. A real TensorBoard with B6's 100 sources at
`--rsync_interval 5` and no new data, against a plain TensorBoard on the same logdir.

Once every source has ended its first sync (and two more intervals have passed), the CPU
time (user + system) of TensorBoard and every process under it (rsync, ssh, the data
server; exited ones through their parents' cutime/cstime) and of the sshd's process tree is
read from /proc at the start and end of a window, as a share of one core. This process is
made a child subreaper, so an ssh ControlMaster that daemonizes is still counted. The sshd
log gives the ssh logins in the window, extrapolated to logins per ssh source per hour;
TensorBoard's status, read every 2.5 s, gives the syncs that ended (is the interval kept?)
and how each source is watched (its change probe's mode).
A second window measures the same fleet once it has been idle for `--steady-after` seconds
(default 90): by then a source listed by rsync has had 10 syncs with nothing new and is
synced every 4x its interval (scheduler.py's idle backoff); a probed source is synced at its
safety interval (10x) whatever the window.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import fleet as fleet_lib  # noqa: E402


def measure(local, remote, runs, interval_s, window_s, limit_flags, steady_after_s):
    common.become_subreaper()
    results = {}
    with common.work_dir("b7") as root:
        print(f"  building {local} local + {remote} ssh sources of {runs} runs ...", flush=True)
        with fleet_lib.Fleet(root, local, remote, runs) as fleet:
            logdir, staging = fleet.folder("logs"), fleet.folder("staging")
            tb = fleet.tensorboard(logdir, staging, interval_s, "tb-fleet.log", limit_flags)
            try:
                settle_s, first = fleet.wait_settled(tb)
                print(f"  first sync of every source ended after {settle_s:.0f} s; "
                      f"{sum(s['state'] == 'error' for s in first['sources'])} in error",
                      flush=True)
                time.sleep(2 * interval_s)
                poll_s = min(2.5, interval_s / 2)
                results["fleet"] = fleet_lib.idle_window(fleet, window_s, tb, poll_s=poll_s)
                if steady_after_s:
                    time.sleep(max(0.0, steady_after_s - 2 * interval_s - window_s))
                    results["steady"] = fleet_lib.idle_window(fleet, window_s, tb,
                                                              poll_s=poll_s)
                last = tb.get_json("/data/plugin/rsync/status", timeout_s=60)
            finally:
                tb.stop()
            results["fleet"].update(settle_s=settle_s, errors=fleet_lib.error_kinds(last),
                                    failed_first=sum(s["state"] == "error"
                                                     for s in first["sources"]))
            print("  plain TensorBoard on the same logdir ...", flush=True)
            plain = fleet.plain_tensorboard(logdir, "tb-plain.log")
            try:
                time.sleep(10)  # its first load of the runs (reload every 5 s)
                results["plain"] = fleet_lib.idle_window(fleet, window_s)
            finally:
                plain.stop()
            remote_count = fleet.remote_count
    common.reap_orphans()
    return results, remote_count


def report(results, sources, remote, runs, interval_s, window_s, limit_flags):
    rows = []
    for key, label in (("fleet", f"TensorBoard + {sources} sources, --rsync_interval "
                                 f"{interval_s:g}, first minute idle"),
                       ("steady", f"same, idle for {results.get('steady_after_s', 0):.0f} s"),
                       ("plain", "plain TensorBoard, same logdir, no sources")):
        if key not in results:
            continue
        r = results[key]
        per_hour = r["logins"] / max(remote, 1) * 3600 / r["window_s"]
        fleet = key != "plain"
        rows.append([label, f"{r['tb']:.1%}", f"{r['sshd']:.1%}", f"{r['tb'] + r['sshd']:.1%}",
                     r["syncs"] if fleet else "-",
                     f"{r['window_s'] * sources / r['syncs']:.1f} s" if fleet and r["syncs"]
                     else "-",
                     common.fmt_s((r["tb"] + r["sshd"]) * r["window_s"] / r["syncs"])
                     if fleet and r["syncs"] else "-",
                     r["logins"], f"{per_hour:.0f}" if fleet else "-"])
    fleet = results["fleet"]
    total = fleet["tb"] + fleet["sshd"]
    steady_total = results["steady"]["tb"] + results["steady"]["sshd"] \
        if "steady" in results else None
    interval_logins = 3600 / interval_s
    flags = " ".join(limit_flags) or "none (the version measured has no such options)"
    lines = [f"{sources} sources ({sources - remote} local, {remote} over ssh to one sshd on "
             f"127.0.0.1), {runs} runs x 3 files each, nothing new at the sources. Window "
             f"{window_s:.0f} s, starting two intervals after every source had ended its "
             f"first sync ({fleet['settle_s']:.0f} s after start; {fleet['failed_first']} "
             f"sources in error then). CPU is a share of one core (the machine has "
             f"{os.cpu_count()}). When the machine is busy the syncs fall behind the "
             "interval and the share drops with them; CPU per sync much less. Limits passed "
             f"to TensorBoard: {flags}. How the sources were watched at the end of the "
             f"first window (probe_mode: sources): {fleet_lib.modes_text(fleet['modes'])}.",
             "",
             common.table(["setup", "TensorBoard + children", "sshd", "total",
                           "syncs ended in window", "seconds between syncs of a source",
                           "CPU per sync",
                           "ssh logins in window", "logins per ssh source per hour"], rows), "",
             common.table(["goal", "measured", ""], [
                 ["idle fleet, first minute: TensorBoard + children + sshd <= 15% of one core",
                  f"{total:.1%}", "met" if total <= 0.15 else "missed"],
                 ["with change probes (the same, <= 5% of one core)",
                  f"{total:.1%}", "met" if total <= 0.05 else "missed"]] + ([
                 ["idle fleet, backed off: TensorBoard + children + sshd <= 15% of one core",
                  f"{steady_total:.1%}", "met" if steady_total <= 0.15 else "missed"]]
                 if "steady" in results else []) + [
                 [f"ssh logins per source per hour (no sharing: 2 per sync, "
                  f"{2 * interval_logins:.0f} at {interval_s:g} s; goal: about one per host "
                  "per ControlPersist window)",
                  f"{fleet['logins'] / max(remote, 1) * 3600 / fleet['window_s']:.0f}", ""]])]
    lines += fleet_lib.errors_text(
        fleet["errors"], "Sources in error at the end of the window (count, message):")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="16 local + 4 ssh sources, a 20 s window")
    parser.add_argument("--interval", type=float, default=5.0, help="--rsync_interval (5)")
    parser.add_argument("--window", type=float, help="seconds of measuring (default 60)")
    parser.add_argument("--steady-after", type=float, default=90.0, metavar="SECONDS",
                        help="also measure once the fleet has been idle this long, its "
                             "syncs backed off (default 90; 0: skip)")
    fleet_lib.add_fleet_options(parser, 80, 20, 3)
    common.add_report_options(parser)
    args = parser.parse_args(argv)
    local, remote, runs = fleet_lib.sizes(args, *((16, 4, 3) if args.quick else (80, 20, 3)))
    window_s = args.window or (20.0 if args.quick else 60.0)
    limit_flags = fleet_lib.tensorboard_limit_flags(args)
    print("B7", flush=True)
    results, remote = measure(local, remote, runs, args.interval, window_s, limit_flags,
                              0.0 if args.quick else args.steady_after)
    results["steady_after_s"] = args.steady_after
    body = report(results, local + remote, remote, runs, args.interval, window_s, limit_flags)
    common.report_section(args, "B7", "B7: idle cost of a fleet", body)


if __name__ == "__main__":
    main()

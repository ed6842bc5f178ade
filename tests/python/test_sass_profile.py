"""scripts/sass_profile.py (the per-instruction stall summary of gpu_run.sh's sass step) on a
small synthetic source-page CSV and nvdisasm listing: CPU only."""
import csv
import gzip
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "sass_profile.py")

HDR = ["Address", "Source", "Warp Stall Sampling (All Samples)", "Instructions Executed",
       "stall_wait", "stall_barrier", "stall_wait (Not Issued)"]
# (SASS, samples, executed, wait, barrier)
INSTRS = [("LDC R1, c[0x0][0x28]", 2, 10, 2, 0),
          ("@P0 FFMA.FTZ R2, R3, R4, R5", 30, 100, 20, 0),
          ("MUFU.EX2 R2, R2", 50, 100, 45, 0),
          ("BAR.SYNC.DEFER_BLOCKING 0x0", 18, 10, 0, 18)]
# Each instruction's inline chain (innermost first).
CHAINS = [[("k.h", 5)],
          [("softmax.h", 103), ("k.h", 40), ("k.h", 12)],
          [("softmax.h", 103), ("k.h", 40), ("k.h", 12)],
          [("k.h", 60)]]


def write_inputs(tmp_path, base=0x7F0000001000):
    path = tmp_path / "s.csv.gz"
    with gzip.open(path, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Kernel Name", "void kern(int)"])
        w.writerow(HDR)
        for i, (text, n, ex, wait, bar) in enumerate(INSTRS):
            w.writerow([hex(base + 16 * i), "      " + text, n, ex, wait, bar, 0])
    lines = ["\t.target\tsm_90a", "//--------------------- .text._Z5otherv   ------------",
             "        /*0000*/                   EXIT ;",
             "//--------------------- .text._Z4kerni --------------------------"]
    for i, (text, *_rest) in enumerate(INSTRS):
        for f, ln in CHAINS[i]:
            lines.append(f'\t//## File "/src/{f}", line {ln}')
        lines.append(f"        /*{16 * i:04x}*/                   {text} ;")
    listing = tmp_path / "all.sass"
    listing.write_text("\n".join(lines) + "\n")
    return path, listing


def run(*args):
    r = subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def row_of(out, where):  # the first table's row
    line = [ln for ln in out.splitlines() if ln.startswith("|") and f"| {where} |" in ln][0]
    return [c.strip() for c in line.strip("|").split("|")]


def test_groups_by_line_with_line_info(tmp_path):
    csv_path, listing = write_inputs(tmp_path)
    out = run(csv_path, "--sass", listing, "--file", "k.h")
    assert "4 SASS instructions, 100 warp samples" in out
    assert "Line info: `_Z4kerni`" in out
    # The outermost k.h frame: the two softmax instructions are line 12's.
    assert row_of(out, "k.h:12")[:2] == ["80", "80.0"]
    assert row_of(out, "k.h:60")[:2] == ["18", "18.0"]
    # --depth 2: the frame inside it, with the innermost one.
    out2 = run(csv_path, "--sass", listing, "--file", "k.h", "--depth", "2")
    assert row_of(out2, "k.h:40 < softmax.h:103")[:2] == ["80", "80.0"]
    assert "wait 81%" in " ".join(row_of(out2, "k.h:40 < softmax.h:103"))
    # By opcode (the predicate guard is not the opcode).
    assert row_of(out, "FFMA")[:3] == ["30", "30.0", "0.0"]


def test_without_a_matching_listing_groups_by_opcode_only(tmp_path):
    csv_path, listing = write_inputs(tmp_path)
    listing.write_text(listing.read_text().replace("MUFU.EX2 R2, R2", "FADD R2, R2, R2"))
    listing.write_text(listing.read_text().replace("BAR.SYNC", "NOP"))
    out = run(csv_path, "--sass", listing)
    assert "no function of the listing matches" in out
    assert "By line" not in out and row_of(out, "MUFU")[0] == "50"

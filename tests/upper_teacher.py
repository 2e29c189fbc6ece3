"""`python tests/upper_teacher.py LOG`: a translation command for the tests of `kdmt distill --teacher-cmd`.

It upper-cases each line of stdin ("silence" gets an empty translation) and logs each call, the number of
lines it got and the first, to LOG. Environment: TEACHER_FAIL_AT=N, the N-th call (counted in LOG) says
two lines on stderr and exits with 3; TEACHER_DROP_AT=N, the N-th call drops its last line.
"""

import os
import sys

lines = sys.stdin.buffer.read().decode("utf-8").split("\n")[:-1]
with open(sys.argv[1], "a", encoding="utf-8") as log:
    log.write(f"{len(lines)}\t{lines[0]}\n")
with open(sys.argv[1], encoding="utf-8") as log:
    call = len(log.readlines())
if os.environ.get("TEACHER_FAIL_AT") == str(call):
    print("warming up", file=sys.stderr)
    print("out of credits", file=sys.stderr)
    sys.exit(3)
out = ["" if line == "silence" else line.upper() for line in lines]
if os.environ.get("TEACHER_DROP_AT") == str(call):
    out.pop()
sys.stdout.buffer.write("".join(line + "\n" for line in out).encode("utf-8"))

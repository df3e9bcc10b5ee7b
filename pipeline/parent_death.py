"""Children that die with their parent, without subprocess's preexec_fn.

Linux's parent-death signal (prctl PR_SET_PDEATHSIG) is usually set by a
preexec_fn, between fork and exec. But a preexec_fn makes Popen fork() the
whole process, and fork() runs gRPC's fork handlers: in a process where gRPC
threads are busy (the worker pool answering StartWorker, a test process with
Beam loaded) the child can deadlock in them before it execs (grpc/grpc#22624),
and Popen waits for that child forever. Without a preexec_fn Popen uses
vfork(), which runs no handlers; here the child asks for the signal itself,
first thing, and kills itself if its parent died before it asked.
"""

import os
import sys
from typing import List, Sequence

# Python source run first in the child: sys.argv[1] is the parent's pid,
# sys.argv[2] the signal; what follows it finds its own arguments from sys.argv[3].
PROLOGUE = (
  'import ctypes, os, sys\n'
  'try:\n'
  '  ctypes.CDLL(None, use_errno=True).prctl(1, int(sys.argv[2]))  # PR_SET_PDEATHSIG\n'
  'except (OSError, AttributeError):\n'
  '  pass\n'
  'if os.getppid() != int(sys.argv[1]):\n'
  '  os.kill(os.getpid(), int(sys.argv[2]))\n'
)
_EXEC_THE_REST = 'os.execvp(sys.argv[3], sys.argv[3:])\n'


def python_command(python: str, signum: int, program: str, args: Sequence[str]) -> List[str]:
  """`python -c program args...`, with `program` run after PROLOGUE (its
  arguments are sys.argv[3:])."""
  return [python, '-c', PROLOGUE + program, str(os.getpid()), str(int(signum)), *args]


def command(signum: int, argv: Sequence[str]) -> List[str]:
  """`argv`, run through this interpreter so that it gets `signum` when this
  process dies (the signal survives the exec)."""
  return python_command(sys.executable, signum, _EXEC_THE_REST, argv)

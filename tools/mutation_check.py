"""A mutation check, run by hand: does the test suite notice when a safeguard breaks?

Each mutation below is a textual patch that breaks one promise the README
makes (the pane in the Idempotency-Key, Retry-After waited, TLS verified, no
redirect followed as a GET, the dead-letter rewrite atomic, ...). For each, the
script patches a copy of the repository (never the working tree itself), runs
the few test files that should notice, and reports whether some test failed
(caught) or all passed (survived). A surviving mutation is a blind spot of the
suite: write the test that fails on it.

    .venv/bin/python tools/mutation_check.py            # every mutation
    .venv/bin/python tools/mutation_check.py --list     # names and what each breaks
    .venv/bin/python tools/mutation_check.py --only tls_verify_off redirect_followed_as_get

Before the mutations, the same tests run once on the unpatched copy (the
baseline): a test that already fails would make every mutation look caught.
A patch that no longer applies (the code moved) is reported as `stale`, not
silently skipped. Exit status: 0 when every mutation was caught, 1 otherwise.
Documented in docs/testing.md; not part of CI (it takes several minutes).
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Not copied: the environment, history, caches and run outputs. Built C
# extensions (*.so, ignored by git) are copied, so the copy runs the fast path.
IGNORED_NAMES = frozenset(
  [
    '.venv',
    '.git',
    '__pycache__',
    '.pytest_cache',
    '.hypothesis',
    'out',
    'dead_letters',
    'build',
    'dist',
    'kinesalite',
  ]
)


class Mutation(NamedTuple):
  """One deliberate bug: in `path`, each (old, new) of `edits` replaces `old`
  (which must occur exactly once) by `new`; `tests` are pytest arguments (files
  or node ids) that should notice."""

  name: str
  breaks: str
  path: str
  edits: Tuple[Tuple[str, str], ...]
  tests: Tuple[str, ...]


MUTATIONS = (
  Mutation(
    'pane_dropped_from_key',
    'the Idempotency-Key leaves out the pane index (a LATE pane would look like a repeat)',
    'transforms/delivery/parts.py',
    (
      (
        "return f'{where}-{pane_index}-{part_index}of{part_count}-{digest}'",
        "return f'{where}-{part_index}of{part_count}-{digest}'",
      ),
    ),
    ('tests/test_delivery_parts.py', 'tests/test_late_pane_over_the_wire.py'),
  ),
  Mutation(
    'retry_after_ignored',
    "urllib3 is told not to wait for Retry-After: the poster's wait is the backoff",
    'transforms/delivery/poster.py',
    (('respect_retry_after_header=True', 'respect_retry_after_header=False'),),
    ('tests/test_delivery_poster.py',),
  ),
  Mutation(
    'retry_after_unparsed',
    'every Retry-After reads as unparseable, so the backoff is used instead',
    'transforms/delivery/poster.py',
    (('      return super().parse_retry_after(retry_after)\n', '      return None\n'),),
    ('tests/test_delivery_poster.py',),
  ),
  Mutation(
    'tls_verify_off',
    'TLS verification off for every session (verify=False always)',
    'transforms/delivery/poster.py',
    (('self._session.verify = tls_verify(self._config, self._environ)', 'self._session.verify = False'),),
    ('tests/test_delivery_poster.py', 'tests/test_delivery_tls_command_line.py'),
  ),
  Mutation(
    'tls_environment_wins',
    'REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override --ca_bundle and --no_verify_tls',
    'transforms/delivery/poster.py',
    (('    self._session.trust_env = False\n', '    self._session.trust_env = True\n'),),
    ('tests/test_delivery_poster.py', 'tests/test_delivery_tls_command_line.py'),
  ),
  Mutation(
    'redirect_followed_as_get',
    'requests follows redirects itself (a 301/302/303 becomes a GET without the document)',
    'transforms/delivery/poster.py',
    (('allow_redirects=False', 'allow_redirects=True'),),
    ('tests/test_delivery_poster.py',),
  ),
  Mutation(
    'redirect_to_another_origin',
    'a 307/308 to another host is followed (it gets the Authorization header)',
    'transforms/delivery/poster.py',
    (
      (
        'if status in BODY_KEEPING_REDIRECTS and location and origin_of(target) == origin_of(url):',
        'if status in BODY_KEEPING_REDIRECTS and location:',
      ),
    ),
    ('tests/test_delivery_poster.py',),
  ),
  Mutation(
    'dead_letter_rewrite_in_place',
    'the dead-letter rewrite writes the file in place instead of a temporary file and a rename',
    'transforms/dead_letter.py',
    (
      ("      with open(temp, 'xb') as f:\n", "      with open(path, 'wb') as f:\n"),
      ('      os.replace(temp, path)\n', ''),
    ),
    (
      'tests/test_dead_letters.py::test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary_file',
      'tests/test_dead_letters.py::test_a_rewrite_drops_updates_and_copies_the_rest_byte_for_byte',
      'tests/test_replay.py::test_full_disk_during_a_rewrite_keeps_the_file_whole_and_exits_1',
    ),
  ),
  Mutation(
    'breaker_never_opens',
    'the circuit breaker never opens, however many attempts fail',
    'transforms/delivery/breaker.py',
    (('elif self._state == CLOSED and self._failures >= self._policy.failure_threshold:', 'elif False:'),),
    ('tests/test_delivery_breaker.py', 'tests/test_delivery_bounded.py'),
  ),
  Mutation(
    'token_not_scrubbed',
    'Secrets.scrub forgets the literal secrets (token, URL password): only query values go',
    'transforms/delivery/redaction.py',
    (
      (
        '    for literal in self._literals:\n      if literal in text:\n',
        '    for literal in ():\n      if literal in text:\n',
      ),
    ),
    ('tests/test_delivery_redaction.py', 'tests/test_delivery_secrets.py'),
  ),
  Mutation(
    'poster_errors_not_scrubbed',
    "the poster's error texts (dead-letter reasons) are not scrubbed at all",
    'transforms/delivery/poster.py',
    (
      (
        "(--http_attempt_timeout): {text}'\n    return self.scrub(text)",
        "(--http_attempt_timeout): {text}'\n    return text",
      ),
    ),
    ('tests/test_delivery_secrets.py', 'tests/test_delivery_poster.py'),
  ),
  Mutation(
    'late_check_disabled',
    'the too-late check never fires: flows for closed windows are silently dropped by Beam',
    'transforms/counting/count.py',
    (
      (
        'last_closed = self._too_late.last_closed_window(batch.watermark) if self._too_late else -math.inf',
        'last_closed = -math.inf',
      ),
    ),
    ('tests/test_counting_pipeline.py', 'tests/test_pipeline_composites.py'),
  ),
)


class Result(NamedTuple):
  name: str
  verdict: str  # caught, survived, stale, error, timeout
  detail: str
  seconds: float


def copy_repository(destination: str) -> None:
  """The working tree as it is (uncommitted changes included), without IGNORED_NAMES."""
  shutil.copytree(
    REPO, destination, symlinks=True, ignore=lambda _, names: [n for n in names if n in IGNORED_NAMES]
  )


def test_environment(copy: str) -> dict:
  """The tests import the copy: it is first on the path (the venv's editable
  install points at the working tree), and no bytecode is cached (a patched
  and a restored file may share a size and an mtime second)."""
  env = dict(os.environ)
  env['PYTHONPATH'] = copy + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
  env['PYTHONDONTWRITEBYTECODE'] = '1'
  return env


def check_imports_the_copy(copy: str, python: str) -> None:
  probe = 'import transforms.delivery.poster as m; print(m.__file__)'
  shown = subprocess.run(
    [python, '-c', probe], cwd=copy, env=test_environment(copy), capture_output=True, text=True, timeout=120
  )
  where = shown.stdout.strip()
  if shown.returncode != 0 or not where.startswith(copy + os.sep):
    raise SystemExit(
      f'mutation_check: the copy in {copy} is not what the tests import '
      f'({where or shown.stderr.strip()[-200:]})'
    )


def apply(copy: str, mutation: Mutation) -> Optional[str]:
  """Patches the copy; returns the original text (None when the patch does not apply once)."""
  path = os.path.join(copy, mutation.path)
  with open(path, encoding='utf-8') as f:
    original = f.read()
  patched = original
  for old, new in mutation.edits:
    if patched.count(old) != 1:
      return None
    patched = patched.replace(old, new)
  compile(patched, path, 'exec')  # a patch that breaks the syntax is the check's bug
  with open(path, 'w', encoding='utf-8') as f:
    f.write(patched)
  return original


def restore(copy: str, mutation: Mutation, original: str) -> None:
  with open(os.path.join(copy, mutation.path), 'w', encoding='utf-8') as f:
    f.write(original)


_FAILED = re.compile(r'^(?:FAILED|ERROR) (\S+)', re.MULTILINE)


def run_tests(
  copy: str, python: str, tests: Sequence[str], timeout: float, stop_at_first: bool, test_timeout: float
) -> Tuple[str, str, float]:
  """(verdict, detail, seconds): `passed`, `failed` (the failing tests), `error`
  (pytest could not run them: collection or usage error) or `timeout`."""
  # A mutation can turn a failure into a hang (a TLS error retried for the
  # whole budget): pytest-timeout ends each test sooner than the suite's limit.
  command = [
    python,
    '-m',
    'pytest',
    '-q',
    '-rfE',
    '-p',
    'no:cacheprovider',
    f'--timeout={test_timeout:g}',
    *tests,
  ]
  if stop_at_first:
    command.insert(4, '-x')
  started = time.monotonic()
  # A session of its own, so that a timeout stops pytest and whatever it started.
  process = subprocess.Popen(
    command,
    cwd=copy,
    env=test_environment(copy),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
  )
  try:
    stdout, stderr = process.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    return 'timeout', f'no result within {timeout:g} s', time.monotonic() - started
  seconds = time.monotonic() - started
  failed = _FAILED.findall(stdout)
  if process.returncode == 0:
    return 'passed', _summary_line(stdout), seconds
  if process.returncode == 1 and failed:
    return 'failed', ', '.join(failed), seconds
  tail = (stdout + stderr).strip().splitlines()[-5:]
  return 'error', f'pytest exit {process.returncode}: ' + ' | '.join(tail), seconds


def _summary_line(output: str) -> str:
  lines = [l for l in output.strip().splitlines() if l.strip()]
  return lines[-1].strip('= ') if lines else ''


def check(
  mutation: Mutation,
  copy: str,
  python: str,
  timeout: float,
  stop_at_first: bool = True,
  test_timeout: float = 120.0,
) -> Result:
  original = apply(copy, mutation)
  if original is None:
    return Result(mutation.name, 'stale', f'the text to patch is not in {mutation.path} exactly once', 0.0)
  try:
    outcome, detail, seconds = run_tests(copy, python, mutation.tests, timeout, stop_at_first, test_timeout)
  finally:
    restore(copy, mutation, original)
  verdict = {'failed': 'caught', 'passed': 'survived'}.get(outcome, outcome)
  return Result(mutation.name, verdict, detail, seconds)


def table(results: Sequence[Result]) -> str:
  rows = [('mutation', 'result', 'seconds', 'failing test(s) / detail')] + [
    (r.name, r.verdict, f'{r.seconds:.0f}', r.detail) for r in results
  ]
  widths = [max(len(row[i]) for row in rows) for i in range(3)]
  return '\n'.join(f'{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d}' for a, b, c, d in rows)


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--only', nargs='+', metavar='NAME', help='run only these mutations')
  parser.add_argument('--list', action='store_true', help='list the mutations and exit')
  parser.add_argument(
    '--skip_baseline', action='store_true', help='do not first run the tests on the unpatched copy'
  )
  parser.add_argument(
    '--timeout', type=float, default=900.0, help="seconds one mutation's tests may take in all (default 900)"
  )
  parser.add_argument(
    '--test_timeout',
    type=float,
    default=120.0,
    help='seconds one test may take (pytest-timeout; default 120)',
  )
  parser.add_argument(
    '--python', default=sys.executable, help='the interpreter that runs pytest (default: this one)'
  )
  parser.add_argument(
    '--every_failure',
    action='store_true',
    help="run all of a mutation's tests and name every one that fails (default: stop at the first)",
  )
  parser.add_argument('--keep', action='store_true', help='keep the copy of the repository')
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  chosen = list(MUTATIONS)
  if args.only:
    known = {m.name for m in MUTATIONS}
    unknown = [name for name in args.only if name not in known]
    if unknown:
      print(f'mutation_check: unknown mutation {", ".join(unknown)} (see --list)', file=sys.stderr)
      return 1
    chosen = [m for m in MUTATIONS if m.name in args.only]
  if args.list:
    for m in chosen:
      print(f'{m.name}: {m.breaks}\n    {m.path}; tests: {" ".join(m.tests)}')
    return 0
  root = tempfile.mkdtemp(prefix='vpc-flow-peers-mutation-')
  copy = os.path.join(root, 'repo')
  try:
    copy_repository(copy)
    check_imports_the_copy(copy, args.python)
    if not args.skip_baseline:
      tests = list(dict.fromkeys(t for m in chosen for t in m.tests))
      print(f'baseline: {" ".join(tests)}', flush=True)
      outcome, detail, seconds = run_tests(
        copy, args.python, tests, 3 * args.timeout, False, args.test_timeout
      )
      print(f'baseline: {outcome} in {seconds:.0f} s: {detail}', flush=True)
      if outcome != 'passed':
        print('mutation_check: the tests fail without any mutation; fix them first', file=sys.stderr)
        return 1
    results = []
    for mutation in chosen:
      result = check(mutation, copy, args.python, args.timeout, not args.every_failure, args.test_timeout)
      print(f'{result.name}: {result.verdict} ({result.seconds:.0f} s)', flush=True)
      results.append(result)
    print()
    print(table(results))
    caught = sum(r.verdict == 'caught' for r in results)
    print(f'\n{caught} of {len(results)} mutations caught')
    return 0 if caught == len(results) else 1
  finally:
    if args.keep:
      print(f'the copy is kept in {copy}')
    else:
      shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
  sys.exit(main())

"""README.md and docs/*.md say only what is so: the README stays short, every
link and anchor leads somewhere, every `python -m pipeline` command they show
(and every `./run_local.sh ARGS` one, which runs it) parses with the command's
own flag parser, every replay command with replay's flags, and every
`--snake_case` flag they name is one the project or Beam declares, so a
renamed or removed flag fails here rather than in a reader's terminal.
(The README's two examples are also --help's: tests/test_command_line.py;
docs/flink.md's Flink commands run in tests/test_readme_flink.py.)"""

import re
import shlex
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.options import add_delivery_args

REPO = Path(__file__).resolve().parent.parent
README = REPO / 'README.md'
DOCS = [README, *sorted((REPO / 'docs').glob('*.md'))]
README_MAX_BYTES = 11_000  # issue 18: "a README of about 10 KB"

# Flags of other tools the pages show in their commands (kubectl's).
OTHER_TOOLS_FLAGS = {'--for', '--timeout'}
# The README's example of a mistyped flag (checked below to be refused as it says).
MISTYPED_EXAMPLE = '--window_second'


def doc_id(path: Path) -> str:
  return str(path.relative_to(REPO))


def code_blocks(text: str) -> list:
  return re.findall(r'^```[a-z]*\n(.*?)^```', text, re.S | re.M)


def command_lines(text: str) -> list:
  """The lines of the fenced blocks of `text`, continuation lines joined."""
  lines = []
  for block in code_blocks(text):
    lines.extend(line.strip() for line in re.sub(r'\\\n\s*', ' ', block).splitlines())
  return lines


def arguments_after(line: str, command: str) -> list:
  words = shlex.split(line, comments=True)
  return words[words.index(command) + 1 :]


def heading_anchors(text: str) -> set:
  """GitHub's anchors of the headings of `text`."""
  anchors = set()
  for block_free in [re.sub(r'^```.*?^```', '', text, flags=re.S | re.M)]:
    for heading in re.findall(r'^#+ (.+)$', block_free, re.M):
      slug = re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')
      anchors.add(slug)
  return anchors


def all_pipeline_flags() -> set:
  parser = cli._RefusingParser(allow_abbrev=False)
  for options_class in cli._options_classes():
    options_class._add_argparse_args(parser)
  return {option for action in parser._actions for option in action.option_strings}


def flags_in_sources(*globs: str) -> set:
  found = set()
  for pattern in globs:
    for path in REPO.glob(pattern):
      found.update(re.findall(r'(--[a-z][a-z0-9_]*)\b', path.read_text()))
  return found


def test_the_readme_is_about_10_kb():
  assert len(README.read_bytes()) <= README_MAX_BYTES


@pytest.mark.parametrize('page', DOCS, ids=doc_id)
def test_every_relative_link_and_anchor_leads_somewhere(page):
  text = page.read_text()
  for target, anchor in re.findall(r'\]\(([^)#\s]*)(#[^)\s]*)?\)', text):
    if target.startswith(('http://', 'https://')):
      continue
    linked = (page.parent / target).resolve() if target else page
    assert linked.exists(), f'{doc_id(page)} links to {target}, which does not exist'
    if anchor and linked.suffix == '.md':
      assert anchor[1:] in heading_anchors(linked.read_text()), (
        f'{doc_id(page)} links to {target}{anchor}: no such heading'
      )


# How many `python -m pipeline` (or `./run_local.sh ARGS`) commands each page shows.
PIPELINE_COMMANDS = {'README.md': 2, 'docs/input.md': 1, 'docs/flink.md': 1, 'docs/kinesis.md': 1}


@pytest.mark.parametrize('page', DOCS, ids=doc_id)
def test_every_pipeline_command_shown_parses(page):
  commands = []
  for line in command_lines(page.read_text()):
    if re.match(r'(\S*/)?python -m pipeline +--', line):
      commands.append(arguments_after(line, 'pipeline'))
    elif line.startswith('./run_local.sh --') and not line.startswith('./run_local.sh --view'):
      commands.append(arguments_after(line, './run_local.sh'))
  for argv in commands:
    cli.parse_options(argv)  # raises UsageError, naming the flag, if it is wrong
  assert len(commands) == PIPELINE_COMMANDS.get(doc_id(page), 0)


def test_the_replay_commands_shown_use_replay_flags():
  parser = cli.argparse.ArgumentParser()
  parser.add_argument('directory')
  parser.add_argument('--endpoint')
  add_delivery_args(parser)
  replay_flags = {option for action in parser._actions for option in action.option_strings}
  replay_flags |= {flag for flag in all_pipeline_flags() if flag.startswith('--s3_')}
  shown = [
    arguments_after(line, 'pipeline.replay')
    for page in DOCS
    for line in command_lines(page.read_text())
    if 'python -m pipeline.replay ' in line
  ]
  assert len(shown) >= 3
  for argv in shown:
    for word in argv:
      flag = word.strip('[]').split('=', 1)[0]
      if flag.startswith('--'):
        assert flag in replay_flags, f'replay has no flag {flag}'


def test_every_flag_the_pages_name_is_declared():
  known = (
    all_pipeline_flags()
    | OTHER_TOOLS_FLAGS
    | {MISTYPED_EXAMPLE}
    | flags_in_sources(
      'pipeline/*.py',
      'devtools/*.py',
      'bench/*.py',
      'bench/*.sh',
      'run_*.sh',
      'tools/*.sh',
      'tools/*.py',
      'deploy/*/*.sh',
    )
  )
  for page in DOCS:
    named = set(re.findall(r'(?<![\w-])(--[a-z][a-z0-9_]*)(?![\w-])', page.read_text()))
    unknown = sorted(named - known)
    assert not unknown, f'{doc_id(page)} names flags nothing declares: {unknown}'


@pytest.mark.parametrize(
  'argv',
  [
    ['--window_second=60'],
    ['--window_seconds=ten'],
  ],
  ids=['unknown flag', 'bad value'],
)
def test_the_readme_quotes_the_refusals_as_the_command_words_them(argv):
  endpoint = '--endpoint=https://example.com/connection_sets/{bucket_time}'
  with pytest.raises(cli.UsageError) as refused:
    cli.parse_options([*argv, '--input=flow-logs/*.log.gz', endpoint])
  quoted = f'`error: {refused.value}`'
  assert quoted in re.sub(r'\s*\n\s*', ' ', README.read_text())


def test_the_readme_quotes_an_aws_refusal_the_command_words():
  [quoted] = re.findall(r'`error: (no AWS region[^`]*)`', re.sub(r'\s*\n\s*', ' ', README.read_text()))
  assert f"'{quoted}'" in (REPO / 'pipeline' / 'aws_errors.py').read_text()

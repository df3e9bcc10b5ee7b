"""The endpoint URL template: where each window's document is POSTed.

`{bucket_time}` becomes the window start in Unix seconds; with grouping
(`--group_by account-id,vpc-id`), each group field has a placeholder named after
it with `_` for `-` (`{account_id}`, `{vpc_id}`), so that every (window, group)
has a URL of its own. A template is checked once, at start-up, so that a typo
(`{bucket}`, a forgotten placeholder) is a usage error instead of every window
landing on one URL.
"""

import re
import urllib.parse
from typing import Sequence, Tuple

BUCKET_TIME = 'bucket_time'
BUCKET_TIME_PLACEHOLDER = '{bucket_time}'
EXAMPLE = 'https://example.com/connection_sets/{bucket_time}'

# A placeholder is a name in braces; any other brace is a mistake.
_PLACEHOLDER = re.compile(r'\{([^{}]*)\}')


def placeholder_name(field: str) -> str:
  """The placeholder of a flow log field: 'account-id' -> 'account_id'."""
  return field.replace('-', '_')


def placeholders(template: str) -> Tuple[str, ...]:
  """The names in braces in `template`, in order."""
  return tuple(_PLACEHOLDER.findall(template))


def validate_endpoint_template(template: str, group_fields: Sequence[str] = ()) -> None:
  """Raises ValueError, saying what to write, unless `template` is an http(s)
  URL holding {bucket_time}, a placeholder for each group field and no other."""
  names = placeholders(template)
  stray = _PLACEHOLDER.sub('', template)
  if '{' in stray or '}' in stray:
    raise ValueError(f'--endpoint has an unmatched brace: {_shown(template)}')
  allowed = {BUCKET_TIME: BUCKET_TIME_PLACEHOLDER}
  allowed.update((placeholder_name(f), '{%s}' % placeholder_name(f)) for f in group_fields)
  unknown = [name for name in names if name not in allowed]
  if unknown:
    raise ValueError(
      f'--endpoint names an unknown placeholder {{{unknown[0]}}}; it may hold ' + ', '.join(allowed.values())
    )
  missing = [placeholder for name, placeholder in allowed.items() if name not in names]
  if missing:
    raise ValueError(
      f'--endpoint must hold {", ".join(missing)} so that each window'
      f'{" and group" if group_fields else ""} has its own URL, for example {EXAMPLE}'
    )
  parts = urllib.parse.urlsplit(_PLACEHOLDER.sub('0', template))
  if parts.scheme not in ('http', 'https') or not parts.netloc:
    raise ValueError(f'--endpoint must be an http:// or https:// URL template, for example {EXAMPLE}')


def endpoint_url(template: str, bucket_time: int, group: Sequence[Tuple[str, str]] = ()) -> str:
  """The URL of one (window, group): `group` is (field, value) pairs, each
  value percent-encoded so that it stays inside its path segment."""
  values = {BUCKET_TIME: str(bucket_time)}
  values.update((placeholder_name(field), urllib.parse.quote(value, safe='')) for field, value in group)
  return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def _shown(template: str) -> str:
  # The template may carry user info or a token in its query: show its path only.
  parts = urllib.parse.urlsplit(template)
  return parts.path or '/'

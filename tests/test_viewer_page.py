"""The viewer page in a real headless Chromium (Debian's, driven by Selenium):
the pipeline runs on the sample data into the receiver, and the page shows its
windows, lists and highlights the scanner's fan-out jump (and exactly the jumps
the rule gives on the exact answer), draws the chart of an address when one is
chosen, follows a changed rule, lets a group be chosen, and leaves a
screenshot under out/ that is checked not to be blank."""

import os

import pytest
from PIL import Image, ImageStat
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from devtools import browser
from devtools.receiver import Receiver
from devtools.sample_data import DEFAULT_START, SCANNER, SampleVpc, write_sample
from devtools.viewer.jumps import JumpRule, series_jumps
from pipeline.cli import main
from receiver_posts import contract_post, send
from tests.builders import reference_answer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCREENSHOT = os.path.join(REPO, 'out', 'viewer', 'viewer.png')
LINES = 12_000
WINDOWS = [DEFAULT_START + 600 * i for i in range(6)]
SCAN_STARTS = DEFAULT_START + 1800  # half way through the sample hour
JUMP_ORANGE = (0xD9, 0x48, 0x0F)  # --jump in viewer.css


@pytest.fixture(scope='module')
def viewer(tmp_path_factory):
  """A receiver with a store holding the pipeline's windows of the sample
  data, and the jumps the rule gives on the exact answer."""
  directory = tmp_path_factory.mktemp('viewer')
  write_sample(str(directory / 'input'), lines=LINES, files=2)
  with Receiver(store=str(directory / 'store.sqlite')) as receiver:
    assert (
      main(
        [
          f'--input={directory}/input/*',
          f'--endpoint={receiver.url()}',
          f'--dead_letter_dir={directory}/dead_letters',
        ]
      )
      == 0
    )
    answer = reference_answer(SampleVpc().flow_lines(LINES, DEFAULT_START))
    assert sorted(answer) == WINDOWS
    assert receiver.documents() == {(start, ''): counts for start, counts in answer.items()}
    jumps = {
      (WINDOWS[i], address)
      for address in {a for counts in answer.values() for a in counts}
      for i in series_jumps([answer[w].get(address, 0) for w in WINDOWS], JumpRule())
    }
    yield receiver, answer, jumps


@pytest.fixture(scope='module')
def page():
  with browser.chromium(1280, 900) as driver:
    yield driver


def wait(driver, condition, what, seconds=30):
  return WebDriverWait(driver, seconds).until(lambda d: condition(d), f'waiting for {what}')


def script(driver, source):
  return driver.execute_script(source)


def rows(driver, table):
  return script(
    driver,
    f"""return [...document.querySelectorAll('#{table} tbody tr')].map(tr =>
      ({{address: tr.dataset.address, window: tr.dataset.window || null,
        classes: [...tr.classList].sort(), cells: [...tr.cells].map(td => td.textContent)}}));""",
  )


def idle(driver):
  return script(driver, 'return document.body.dataset.ready === "1" && !document.body.dataset.busy')


def test_the_page_shows_the_scanner_s_jump_and_its_chart(viewer, page):
  receiver, answer, jumps = viewer
  assert {address for _, address in jumps} == {SCANNER}
  assert (SCAN_STARTS, SCANNER) in jumps
  page.get(receiver.viewer_url())
  wait(page, idle, 'the first view')
  assert page.find_element(By.ID, 'status').text == ''
  assert page.title == 'vpc-flow-peers: distinct peers per window'

  # Windows on the time axis, those with jumps marked.
  assert (
    script(
      page,
      'return [...document.querySelectorAll("#timeline rect.window-bar")].map(r => Number(r.dataset.start))',
    )
    == WINDOWS
  )
  assert script(
    page,
    'return [...document.querySelectorAll("#timeline circle.jump-mark")].map(c => Number(c.dataset.start))',
  ) == sorted({w for w, _ in jumps})

  # The jumps, newest first, exactly the rule's; the scanner's highlighted.
  listed = rows(page, 'jumps')
  assert [(int(r['window']), r['address']) for r in listed] == sorted(jumps, reverse=True)
  assert all(r['classes'] == ['jump'] for r in listed)
  scan_start_row = next(r for r in listed if int(r['window']) == SCAN_STARTS)
  assert scan_start_row['cells'][1:3] == [SCANNER, str(answer[SCAN_STARTS][SCANNER])]

  # The last window's top talkers, the scanner among them and highlighted.
  top = rows(page, 'top')
  expected_top = sorted(answer[WINDOWS[-1]].items(), key=lambda kv: (-kv[1], kv[0]))[:20]
  assert [(r['address'], int(r['cells'][2])) for r in top] == expected_top
  assert next(r for r in top if r['address'] == SCANNER)['classes'] == ['jump']
  assert page.find_element(By.CSS_SELECTOR, '#series .hint').text.startswith('Choose an address')

  # Choosing the scanner's first jump draws its chart, and picks that window.
  page.find_element(By.CSS_SELECTOR, f'#jumps tr[data-window="{SCAN_STARTS}"]').click()
  wait(
    page,
    lambda d: idle(d) and d.find_elements(By.CSS_SELECTOR, '#series rect.series-bar'),
    "the scanner's chart",
  )
  bars = script(
    page,
    """return [...document.querySelectorAll('#series rect.series-bar')].map(r =>
      [Number(r.dataset.start), Number(r.dataset.peers), r.classList.contains('jump'),
       Number(r.getAttribute('height')) > 0]);""",
  )
  assert bars == [
    [w, answer[w].get(SCANNER, 0), (w, SCANNER) in jumps, SCANNER in answer[w]] for w in WINDOWS
  ]
  assert page.find_element(By.ID, 'address-name').text == SCANNER
  assert page.find_element(By.ID, 'top-window').text == 'in the window of 2026-01-01 00:30 UTC'
  scanner_row = next(r for r in rows(page, 'top') if r['address'] == SCANNER)
  assert scanner_row['classes'] == ['chosen', 'jump']
  assert script(page, 'return document.querySelectorAll("#series polyline.baseline").length') == 1
  assert '#window=1767227400&address=10.0.3.66' in page.current_url

  os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
  assert page.save_screenshot(SCREENSHOT)
  image = Image.open(SCREENSHOT).convert('RGB')
  assert image.size[0] == 1280
  variance = sum(ImageStat.Stat(image).var) / 3
  colours = image.getcolors(maxcolors=1 << 20)
  orange = sum(n for n, rgb in colours if all(abs(a - b) <= 8 for a, b in zip(rgb, JUMP_ORANGE)))
  assert variance > 200, f'the screenshot looks blank (pixel variance {variance:.0f})'
  assert len(colours) > 50
  assert orange > 2000, f'the jump is not drawn in orange ({orange} pixels)'


def test_typing_an_address_draws_its_chart(viewer, page):
  receiver, answer, jumps = viewer
  web_host = min((a for a in answer[WINDOWS[0]] if a != SCANNER), key=lambda a: (-answer[WINDOWS[0]][a], a))
  page.get(receiver.viewer_url())
  wait(page, idle, 'the first view')
  box = page.find_element(By.ID, 'address')
  box.clear()
  box.send_keys(web_host, Keys.ENTER)
  wait(
    page, lambda d: idle(d) and d.find_element(By.ID, 'address-name').text == web_host, "the web host's chart"
  )
  bars = script(
    page,
    """return [...document.querySelectorAll('#series rect.series-bar')].map(r =>
      [Number(r.dataset.start), Number(r.dataset.peers), r.classList.contains('jump')]);""",
  )
  assert bars == [[w, answer[w].get(web_host, 0), (w, web_host) in jumps] for w in WINDOWS]
  assert not any(jump for _, _, jump in bars)


def test_a_stricter_rule_clears_the_jumps(viewer, page):
  receiver, answer, _ = viewer
  page.get(receiver.viewer_url())
  wait(page, idle, 'the first view')
  minimum = page.find_element(By.ID, 'min-count')
  minimum.clear()
  minimum.send_keys(str(max(answer[w][SCANNER] for w in WINDOWS) + 1))
  page.find_element(By.CSS_SELECTOR, '#rule button').click()
  wait(
    page,
    lambda d: idle(d) and not d.find_elements(By.CSS_SELECTOR, '#jumps tbody tr'),
    'no jumps under the stricter rule',
  )
  assert page.find_element(By.ID, 'jumps-summary').text.startswith('none: at least ')
  assert script(page, 'return document.querySelectorAll("#timeline circle.jump-mark").length') == 0
  assert page.find_element(By.ID, 'status').text == ''


def test_groups_are_selectable(tmp_path, page):
  """With grouping, a menu chooses the group, and the windows, jumps and top
  talkers follow it (POSTs built to the contract, as grouped runs send them)."""
  account1 = (('account-id', '111122223333'), ('vpc-id', 'vpc-0a1b'))
  account2 = (('account-id', '444455556666'), ('vpc-id', 'vpc-9f9f'))
  with Receiver(store=str(tmp_path / 'store.sqlite')) as receiver:
    for i, start in enumerate(WINDOWS):
      send(receiver, contract_post(start, {'10.0.0.5': 40 if i == 4 else 2, '10.0.0.6': 9}, group=account1))
    for start in WINDOWS[:3]:
      send(receiver, contract_post(start, {'10.0.0.5': 7}, group=account2))
    page.get(receiver.viewer_url())
    wait(page, idle, 'the first view')
    menu = page.find_element(By.ID, 'group')
    assert page.find_element(By.ID, 'group-label').is_displayed()
    assert [o.text for o in menu.find_elements(By.TAG_NAME, 'option')] == [
      'account-id=111122223333 vpc-id=vpc-0a1b',
      'account-id=444455556666 vpc-id=vpc-9f9f',
    ]
    assert [(int(r['window']), r['address']) for r in rows(page, 'jumps')] == [(WINDOWS[4], '10.0.0.5')]
    assert len(page.find_elements(By.CSS_SELECTOR, '#timeline rect.window-bar')) == 6

    menu.find_elements(By.TAG_NAME, 'option')[1].click()
    wait(
      page,
      lambda d: idle(d) and len(d.find_elements(By.CSS_SELECTOR, '#timeline rect.window-bar')) == 3,
      "the second group's windows",
    )
    assert rows(page, 'jumps') == []
    assert [(r['address'], r['cells'][2]) for r in rows(page, 'top')] == [('10.0.0.5', '7')]
    assert 'group=account-id%3D444455556666%26vpc-id%3Dvpc-9f9f' in page.current_url

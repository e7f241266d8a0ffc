"""How long Open WebUI waits for a model that is still loading, measured through the gateway.

Run through `scripts/e2e_openwebui.sh load-timeout` (Open WebUI's venv, see that script).
One gateway serves one pool per case, each a simulated engine with `start: on_demand` and
`--startup-seconds LOAD`, so the first chat for a pool waits LOAD seconds in the gateway's
queue before the engine answers. Several Open WebUI instances sit in front of it, each
with its own timeout settings (`--webui`; by default: none set, AIOHTTP_CLIENT_TIMEOUT=300,
AIOHTTP_CLIENT_TIMEOUT=60, AIOHTTP_CLIENT_STREAM_IDLE_TIMEOUT=60). Every case sends one
streamed chat at the same moment, so the whole run lasts about the longest load plus
Open WebUI's start-up (~8 min with the default cases):

- `api` cases POST Open WebUI's own `/api/chat/completions` with the user's token and
  `stream: true` (no chat id: Open WebUI relays the stream in the HTTP response);
- `browser` cases type the message in Open WebUI's page in headless Chromium (the UI path:
  a background task, tokens over the websocket, the result stored in the chat).

Recorded per case: whether the user got the answer, what Open WebUI returned or showed and
after how long, the gateway's ledger row (499 = the client went away), and the engine's
own counters (requests it finished or aborted). Also: Open WebUI's `/api/models` while the
pools are `stopped` and while they are `starting`. The table goes to stdout and, with
the raw figures, to `<work-dir>/load-runs/<time>/summary.json`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import sqlite3
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from e2e_openwebui import (
    CHROMIUM_FLAGS,
    CheckFailed,
    Children,
    Clock,
    SetupFailed,
    dismiss_dialogs,
    free_port,
    http_json,
    log,
    wait_until,
)

# The demo config's keys (config/demo.yaml): client sk-demo-key, admin sk-demo-admin.
CLIENT_KEY = "sk-demo-key"
ADMIN_KEY = "sk-demo-admin"
AUTH_YAML = """auth:
  admin_key_sha256: a1304128f87ba7aa357d7fe938db628cccb9ad9465ba832773a604aed2cfd54e
  keys:
    - name: demo
      key_sha256: 82dae6d443609cfcb4e698af21391e5132c679ce83b37086ada791a0fb2a43ee
      models: ["*"]
"""
ANSWER_TOKENS = 40
# Open WebUI 0.12's knobs on its requests to an OpenAI connection (open_webui/env.py,
# utils/session_pool.py): AIOHTTP_CLIENT_TIMEOUT = aiohttp's `total` (unset: none),
# AIOHTTP_CLIENT_STREAM_IDLE_TIMEOUT = `sock_read` on streamed requests (unset: none).
DEFAULT_WEBUIS = ["default=", "total300=AIOHTTP_CLIENT_TIMEOUT=300", "total60=AIOHTTP_CLIENT_TIMEOUT=60",
                  "idle60=AIOHTTP_CLIENT_STREAM_IDLE_TIMEOUT=60"]
DEFAULT_CASES = ",".join([
    "default:api:30", "default:api:120", "default:api:250", "default:api:290", "default:api:320",
    "default:browser:320",
    "total300:api:250", "total300:api:290", "total300:api:320", "total300:api:250+60",
    "total60:api:30", "total60:api:90", "total60:api:40+40", "total60:browser:90",
    "idle60:api:30", "idle60:api:90", "idle60:api:40+40", "idle60:browser:90",
])


@dataclass(frozen=True)
class Case:
    webui: str  # the Open WebUI instance that sends it (--webui NAME=...)
    via: str  # "api" or "browser"
    load_s: float  # the engine's start-up time (--startup-seconds)
    answer_s: float  # how long the streamed answer takes once the engine runs

    @property
    def pool(self) -> str:
        answer = f"-answer{self.answer_s:g}s" if self.answer_s >= 1 else ""
        return f"{self.webui}-{self.via}-load{self.load_s:g}s{answer}"


@dataclass
class Outcome:
    case: Case
    answered: bool = False
    status: int | None = None  # the HTTP status Open WebUI answered (api cases)
    headers_s: float | None = None  # seconds from sending to Open WebUI's response headers
    first_token_s: float | None = None
    ended_s: float | None = None
    answer_chars: int = 0
    done_marker: bool = False  # `data: [DONE]` seen (api) / message marked done (browser)
    shown: str = ""  # the error Open WebUI returned or rendered, verbatim (trimmed)
    screenshot: str | None = None
    retry: dict[str, Any] | None = None  # a second chat after a failure (api cases): is the load kept?
    gateway: dict[str, Any] = field(default_factory=dict)  # ledger row + backend + engine counters


def parse_cases(spec: str) -> list[Case]:
    """`default:api:30, short:browser:90, short:api:40+40` -> cases (LOAD[+ANSWER] in seconds)."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        webui, via, times = item.split(":")
        load, _, answer = times.partition("+")
        if via not in ("api", "browser"):
            raise SystemExit(f"case {item!r}: via must be api or browser")
        out.append(Case(webui, via, float(load), float(answer or 0)))
    return out


def parse_webuis(specs: list[str]) -> dict[str, dict[str, str]]:
    """`short=AIOHTTP_CLIENT_TIMEOUT=60` (repeatable; `default=` sets nothing) -> name: env."""
    out: dict[str, dict[str, str]] = {}
    for spec in specs:
        name, _, env = spec.partition("=")
        out[name] = dict(kv.split("=", 1) for kv in env.split(";") if kv)
    return out


def gateway_config(cases: list[Case], run_dir: Path, stream_keepalive: float | None) -> str:
    pools = []
    for c in cases:
        itl_ms = max(5.0, c.answer_s * 1000 / ANSWER_TOKENS)
        pools.append(f"""  {c.pool}:
    kind: chat
    engine: sim
    model: /models/{c.pool}
    args: [--startup-seconds, "{c.load_s:g}", --ttft-ms, "50", --itl-ms, "{itl_ms:g}", --output-tokens, "{ANSWER_TOKENS}", --max-model-len, "65536"]
    start: on_demand
    startup_timeout: {max(c.load_s * 2, 600):g}
    health: {{interval: 1}}
""")
    return f"""# Generated by scripts/owui_load_timeout.py: one on-demand pool per case.
server:
  host: 127.0.0.1
  port: 8000
  access_log: true
{f"  stream_keepalive: {stream_keepalive:g}" if stream_keepalive else ""}
store: sqlite:///{run_dir}/usage.db
{AUTH_YAML}
engines:
  port_range: [20400, 20499]
  log_dir: {run_dir}/engine-logs
pools:
{''.join(pools)}"""


# --- Open WebUI --------------------------------------------------------------------------------


@dataclass
class WebUI:
    name: str
    base: str
    token: str = ""
    timeouts: dict[str, str] = field(default_factory=dict)  # the AIOHTTP_* variables set


def start_webui(children: Children, args: argparse.Namespace, name: str, timeouts: dict[str, str],
                gateway_url: str, run_dir: Path) -> WebUI:
    port = free_port()
    data = run_dir / f"webui-{name}" / "data"
    data.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOHTTP_")}
    env.update({
        "OPENAI_API_BASE_URL": f"{gateway_url}/v1",
        "OPENAI_API_KEY": CLIENT_KEY,
        "ENABLE_OLLAMA_API": "False",
        "OFFLINE_MODE": "True",
        "HF_HUB_OFFLINE": "1",
        "DATA_DIR": str(data),
        "ENABLE_PERSISTENT_CONFIG": "False",
        "WEBUI_SECRET_KEY": "e2e-" + os.urandom(16).hex(),
        "ANONYMIZED_TELEMETRY": "False",
        "DO_NOT_TRACK": "true",
        "SCARF_NO_ANALYTICS": "true",
        # The UI's follow-up/title/tag tasks would add requests to every pool after the answer.
        "ENABLE_TITLE_GENERATION": "False",
        "ENABLE_TAGS_GENERATION": "False",
        "ENABLE_FOLLOW_UP_GENERATION": "False",
        "ENABLE_AUTOCOMPLETE_GENERATION": "False",
    })
    env.update(timeouts)
    children.start(f"open-webui-{name}", [args.open_webui, "serve", "--host", "127.0.0.1", "--port", str(port)],
                   cwd=data.parent, env=env, log_path=run_dir / f"open-webui-{name}.log", grace=20)
    return WebUI(name, f"http://127.0.0.1:{port}", timeouts=timeouts)


def sign_up(ui: WebUI, clock: Clock) -> None:
    status, body = http_json("POST", f"{ui.base}/api/v1/auths/signup", timeout=clock.budget(30),
                             body={"name": "Load Admin", "email": "admin@example.com", "password": "load-timeout-pw"})
    if status != 200 or not isinstance(body, dict) or not body.get("token"):
        raise SetupFailed(f"{ui.name}: signup -> {status}: {str(body)[:300]}")
    ui.token = body["token"]
    http_json("POST", f"{ui.base}/api/v1/users/user/settings/update", token=ui.token,
              body={"ui": {"showChangelog": False}}, timeout=clock.budget(15))


def model_listing(ui: WebUI, gateway_url: str) -> dict[str, Any]:
    """Open WebUI's /api/models (which asks the gateway's /v1/models) and the pools' states."""
    _, backends = http_json("GET", f"{gateway_url}/admin/backends", token=ADMIN_KEY, timeout=10)
    states = sorted({row["state"] for row in (backends or {}).get("data", [])})
    t0 = time.monotonic()
    status, models = http_json("GET", f"{ui.base}/api/models", token=ui.token, timeout=60)
    ids = sorted(m.get("id") for m in (models or {}).get("data", [])) if isinstance(models, dict) else []
    return {"webui": ui.name, "pool_states": states, "status": status, "seconds": round(time.monotonic() - t0, 2),
            "models_listed": len(ids), "ids": ids}


# --- one streamed chat through Open WebUI's API --------------------------------------------------


def api_chat(ui: WebUI, case: Case, out: Outcome, read_timeout: float) -> None:
    """POST /api/chat/completions with stream true; timestamps every stage of the answer."""
    body = json.dumps({"model": case.pool, "stream": True,
                       "messages": [{"role": "user", "content": f"Hello ({case.pool})"}]}).encode()
    host, port = ui.base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=read_timeout)
    t0 = time.monotonic()
    try:
        conn.request("POST", "/api/chat/completions", body=body,
                     headers={"Authorization": f"Bearer {ui.token}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        out.status, out.headers_s = resp.status, round(time.monotonic() - t0, 1)
        if resp.status != 200 or "text/event-stream" not in (resp.getheader("content-type") or ""):
            out.shown = resp.read().decode(errors="replace")[:400]
            return
        errors = []
        while line := resp.readline():
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                out.done_marker = True
                continue
            try:
                event = json.loads(data)
            except ValueError:
                errors.append(data.decode(errors="replace"))
                continue
            if "error" in event:
                errors.append(json.dumps(event["error"])[:300])
            for choice in event.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") or ""
                if text and out.first_token_s is None:
                    out.first_token_s = round(time.monotonic() - t0, 1)
                out.answer_chars += len(text)
        out.shown = "; ".join(errors)[:400]
    except (OSError, http.client.HTTPException) as e:
        out.shown = f"{type(e).__name__}: {e}"[:400]
    finally:
        out.ended_s = round(time.monotonic() - t0, 1)
        out.answered = out.done_marker and out.answer_chars > 0 and not out.shown
        conn.close()


# --- chats typed in the browser ------------------------------------------------------------------


@dataclass
class BrowserChat:
    case: Case
    ui: WebUI
    out: Outcome
    page: Any = None
    sent_at: float = 0.0
    chat_id: str | None = None


def stored_message(chat: BrowserChat) -> dict[str, Any] | None:
    """The assistant message of this case's chat as Open WebUI stored it (None: not yet)."""
    if chat.chat_id is None:
        status, chats = http_json("GET", f"{chat.ui.base}/api/v1/chats/", token=chat.ui.token, timeout=15)
        for c in chats if status == 200 and isinstance(chats, list) else []:
            s, full = http_json("GET", f"{chat.ui.base}/api/v1/chats/{c['id']}", token=chat.ui.token, timeout=15)
            msgs = ((full or {}).get("chat") or {}).get("history", {}).get("messages", {}) if s == 200 else {}
            if any(chat.case.pool in str(m.get("content")) for m in msgs.values() if m.get("role") == "user"):
                chat.chat_id = c["id"]
                break
        if chat.chat_id is None:
            return None
    s, full = http_json("GET", f"{chat.ui.base}/api/v1/chats/{chat.chat_id}", token=chat.ui.token, timeout=15)
    msgs = ((full or {}).get("chat") or {}).get("history", {}).get("messages", {}) if s == 200 else {}
    assistants = [m for m in msgs.values() if m.get("role") == "assistant"]
    return max(assistants, key=lambda m: m.get("timestamp", 0)) if assistants else None


def run_browser(chats: list[BrowserChat], args: argparse.Namespace, shots_dir: Path, clock: Clock,
                end_by: float) -> None:
    """Send every browser case's message, each in its own page, then watch them all."""
    from playwright.sync_api import sync_playwright  # installed in the e2e venv only

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_FLAGS)
        try:
            for chat in chats:
                context = browser.new_context(viewport={"width": 1280, "height": 800})
                context.add_init_script(f"window.localStorage.setItem('token', {json.dumps(chat.ui.token)});")
                page = context.new_page()
                page.set_default_timeout(30_000)
                # ?models= selects the model (the selector is exercised by e2e_openwebui.py).
                page.goto(f"{chat.ui.base}/?models={chat.case.pool}", timeout=clock.budget(60) * 1000)
                page.wait_for_selector("#chat-input", timeout=clock.budget(90) * 1000)
                dismiss_dialogs(page)
                page.locator("#chat-input").click()
                page.keyboard.type(f"Hello ({chat.case.pool})")
                page.locator("#send-message-button").click()
                chat.page, chat.sent_at = page, time.monotonic()
                log(f"browser: sent the message for {chat.case.pool}")
            pending = list(chats)
            while pending and time.monotonic() < end_by:
                time.sleep(2)
                for chat in list(pending):
                    msg = stored_message(chat)
                    if msg is None or not (msg.get("done") or msg.get("error")):
                        continue
                    # Let the page render the final state before the screenshot.
                    chat.page.wait_for_timeout(1500)
                    finish_browser_chat(chat, msg, shots_dir)
                    pending.remove(chat)
            for chat in pending:
                chat.out.shown = f"(still waiting after {time.monotonic() - chat.sent_at:.0f}s) " + \
                    chat.page.locator(".chat-assistant").last.inner_text()[:300]
        finally:
            browser.close()


def finish_browser_chat(chat: BrowserChat, msg: dict[str, Any], shots_dir: Path) -> None:
    out = chat.out
    out.ended_s = round(time.monotonic() - chat.sent_at, 1)  # within the 2 s polling interval
    out.done_marker = bool(msg.get("done"))
    error = msg.get("error")
    content = msg.get("content") or ""
    out.answer_chars = len(content)
    rendered = chat.page.locator(".chat-assistant").last.inner_text().strip()
    if error:
        out.shown = f"stored error: {json.dumps(error)[:300]}; rendered: {rendered[:300]!r}"
    out.answered = bool(content) and not error
    path = shots_dir / f"openwebui-load-{chat.case.pool}.png"
    chat.page.screenshot(path=str(path))
    out.screenshot = str(path)
    log(f"browser: {chat.case.pool} ended after {out.ended_s}s: answered={out.answered} {out.shown[:160]}")


# --- the gateway's side ---------------------------------------------------------------------------


def gateway_side(gateway_url: str, run_dir: Path, outcomes: list[Outcome]) -> None:
    """Ledger rows, backend state and the engine's own counters for every case's pool."""
    _, backends = http_json("GET", f"{gateway_url}/admin/backends", token=ADMIN_KEY, timeout=10)
    rows = {r["pool"]: r for r in (backends or {}).get("data", [])}
    ledger: dict[str, list[dict[str, Any]]] = {}
    db = run_dir / "usage.db"
    if db.exists():
        with sqlite3.connect(db) as con:
            con.row_factory = sqlite3.Row
            for r in con.execute("SELECT pool, status, stream, latency, ttft, error FROM usage ORDER BY ts"):
                ledger.setdefault(r["pool"], []).append(
                    {k: (round(r[k], 1) if isinstance(r[k], float) else r[k]) for k in r.keys() if k != "pool"})
    for out in outcomes:
        row = rows.get(out.case.pool, {})
        engine: dict[str, Any] = {}
        if row.get("port"):
            _, sim = http_json("GET", f"http://127.0.0.1:{row['port']}/sim/state", timeout=5)
            if isinstance(sim, dict):
                engine = {k: sim.get(k) for k in ("requests_total", "requests_succeeded", "requests_aborted")}
        out.gateway = {"ledger": ledger.get(out.case.pool, []), "backend_state": row.get("state"),
                       "last_load_seconds": row.get("last_load_seconds"), "engine": engine}


def table(outcomes: list[Outcome], timeouts: dict[str, str]) -> str:
    lines = ["| Open WebUI timeouts | via | load (gateway measured) | answer | user got the answer | "
             "Open WebUI ended after | what Open WebUI returned / showed | gateway ledger | engine |",
             "|---|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        c = o.case
        led = "; ".join(f"{r['status']} {r['error'] or ''}".strip() for r in o.gateway.get("ledger", [])) or "-"
        eng = o.gateway.get("engine") or {}
        eng_s = (f"{eng.get('requests_succeeded')} done, {eng.get('requests_aborted')} aborted"
                 if eng else "-") + f" ({o.gateway.get('backend_state')})"
        shown = o.shown.replace("|", "\\|").replace("\n", " ")[:160]
        if shown and c.via == "api":
            shown = f"HTTP {o.status}: {shown}"
        shown = shown or (
            f"{o.status} stream, {o.answer_chars} chars" if c.via == "api" else f"answer, {o.answer_chars} chars")
        retry = "" if o.retry is None else f" (retry: {'answered' if o.retry['answered'] else 'failed'} in {o.retry['seconds']} s)"
        measured = o.gateway.get("last_load_seconds")
        load = f"{c.load_s:g} s" + (f" ({measured:.1f} s)" if isinstance(measured, (int, float)) else "")
        lines.append(f"| {timeouts[c.webui]} | {c.via} | {load} | {c.answer_s:g} s | "
                     f"{'yes' if o.answered else 'NO'}{retry} | {o.ended_s} s | {shown} | {led} | {eng_s} |")
    return "\n".join(lines)


# --- the run --------------------------------------------------------------------------------------


def run(args: argparse.Namespace, children: Children) -> list[Outcome]:
    cases = parse_cases(args.cases)
    webuis = parse_webuis(args.webui or DEFAULT_WEBUIS)
    unknown = {c.webui for c in cases} - set(webuis)
    if unknown:
        raise SetupFailed(f"cases name Open WebUI instances not given with --webui: {sorted(unknown)}")
    longest = max(c.load_s + c.answer_s for c in cases)
    # Set-up (Open WebUI's first start: 1-4 min on 2 busy cores) has its own budget;
    # the measurement's clock restarts when the chats are sent.
    clock = Clock(time.monotonic() + args.setup_budget)
    run_dir = Path(args.work_dir) / "load-runs" / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True)
    log(f"run directory {run_dir}; {len(cases)} cases, longest load+answer {longest:g}s")

    cfg = run_dir / "gateway.yaml"
    cfg.write_text(gateway_config(cases, run_dir, args.stream_keepalive))
    port = free_port()
    gateway_url = f"http://127.0.0.1:{port}"
    gateway = children.start("gateway", [args.gateway_python, "-m", "gateway.cli", "serve", "--config", str(cfg),
                                         "--host", "127.0.0.1", "--port", str(port)],
                             cwd=Path(args.root), env=dict(os.environ), log_path=run_dir / "gateway.log", grace=45)
    wait_until("gateway /health", lambda: http_json("GET", f"{gateway_url}/health", timeout=3)[0] == 200,
               clock, 60, gateway)

    timeouts = {name: " ".join(f"{k}={v}" for k, v in env.items()) or "none set" for name, env in webuis.items()}
    uis = {name: start_webui(children, args, name, env, gateway_url, run_dir)
           for name, env in webuis.items() if any(c.webui == name for c in cases)}
    for ui in uis.values():
        wait_until(f"Open WebUI {ui.name} /health", lambda u=ui: http_json("GET", f"{u.base}/health", timeout=3)[0] == 200,
                   clock, 240, interval=1.0)
        sign_up(ui, clock)
    listings = [model_listing(ui, gateway_url) for ui in uis.values()]  # every pool `stopped`
    log(f"/api/models with every pool stopped: {json.dumps(listings)[:400]}")

    outcomes = [Outcome(c) for c in cases]
    clock = Clock(time.monotonic() + longest + args.overhead)
    threads = [threading.Thread(target=api_chat, args=(uis[o.case.webui], o.case, o, longest + args.overhead),
                                daemon=True) for o in outcomes if o.case.via == "api"]
    for t in threads:
        t.start()
    log(f"sent {len(threads)} API chats")
    browser_chats = [BrowserChat(o.case, uis[o.case.webui], o) for o in outcomes if o.case.via == "browser"]
    lister = threading.Timer(15, lambda: listings.extend(model_listing(ui, gateway_url) for ui in uis.values()))
    lister.start()
    end_by = time.monotonic() + clock.budget(longest + args.overhead - 30)
    if browser_chats:
        shots = Path(args.screenshots)
        shots.mkdir(parents=True, exist_ok=True)
        try:
            run_browser(browser_chats, args, shots, clock, end_by)
        except Exception as e:  # noqa: BLE001 - the API cases' figures are still worth reporting
            log(f"browser cases failed: {type(e).__name__}: {str(e)[:300]}")
            for chat in browser_chats:
                chat.out.shown = chat.out.shown or f"(driver failed: {type(e).__name__})"
    for t in threads:
        t.join(timeout=max(1.0, end_by - time.monotonic()))
    lister.join(timeout=60)
    for o in outcomes:
        if o.case.via == "api" and not o.answered:
            again = Outcome(o.case)
            api_chat(uis[o.case.webui], o.case, again, 60)
            o.retry = {"answered": again.answered, "seconds": again.ended_s, "shown": again.shown}
            log(f"retry of {o.case.pool}: answered={again.answered} in {again.ended_s}s")
    time.sleep(3)  # the ledger is written in batches every second or so
    gateway_side(gateway_url, run_dir, outcomes)

    report = {"stream_keepalive": args.stream_keepalive, "timeouts": timeouts, "listings": listings, "outcomes": [asdict(o) for o in outcomes]}
    (run_dir / "summary.json").write_text(json.dumps(report, indent=2))
    md = table(outcomes, timeouts)
    (run_dir / "summary.md").write_text(md + "\n")
    print(md, flush=True)
    log(f"/api/models: {json.dumps([{k: v for k, v in x.items() if k != 'ids'} for x in listings])}")
    log(f"summary: {run_dir / 'summary.json'}")
    return outcomes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(Path(__file__).resolve().parent.parent), help="the repository")
    p.add_argument("--work-dir", default="var/e2e")
    p.add_argument("--gateway-python", default=".venv/bin/python")
    p.add_argument("--open-webui", default="var/e2e/venv/bin/open-webui")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--screenshots", default="var/e2e/load-screenshots")
    p.add_argument("--webui", action="append", metavar="NAME=VAR=VALUE[;VAR=VALUE]",
                   help=f"an Open WebUI instance and its AIOHTTP_* settings (repeatable; default: {DEFAULT_WEBUIS})")
    p.add_argument("--cases", default=DEFAULT_CASES,
                   help="comma-separated WEBUI:api|browser:LOAD[+ANSWER] (seconds)")
    p.add_argument("--stream-keepalive", type=float, help="the gateway's server.stream_keepalive (default: off)")
    p.add_argument("--overhead", type=float, default=180, help="seconds allowed beyond the longest case")
    p.add_argument("--setup-budget", type=float, default=600, help="seconds for the gateway and Open WebUI to start")
    args = p.parse_args(argv)
    args.root = str(Path(args.root).resolve())
    for name in ("work_dir", "gateway_python", "open_webui", "screenshots"):
        value = Path(getattr(args, name))
        setattr(args, name, str(value if value.is_absolute() else Path(args.root) / value))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    children = Children()

    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(f"signal {signum}: stopping")

    signal.signal(signal.SIGTERM, on_term)
    try:
        run(args, children)
        return 0
    except (CheckFailed, SetupFailed) as e:
        log(f"FAILED: {e}")
        return 2
    finally:
        children.stop_all()


if __name__ == "__main__":
    sys.exit(main())

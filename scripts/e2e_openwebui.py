"""Open WebUI end to end through the gateway, driven in headless Chromium.

Run through `scripts/e2e_openwebui.sh` (which installs Open WebUI and Playwright in
var/e2e/venv and runs this file with that venv's Python). Steps:

 1. start the gateway on the demo config (simulated engines) on a free loopback port;
 2. start Open WebUI against it (offline, fresh DATA_DIR, scratch working directory);
 3. sign up the admin through Open WebUI's API (the first user becomes admin);
 4. in Chromium (Debian's binary, driven by Playwright; never `playwright install`):
    pick the chat model, send a message, wait for the streamed answer to be rendered;
    pick the reasoning model in a new chat, send a message, see the reasoning block
    rendered apart from the answer; a screenshot at each step;
 5. ask the gateway's admin API (`GET /admin/usage?group_by=pool`) that both pools
    got new usage records.

Every process it starts is stopped by PID in `finally` (SIGTERM to its process group,
then SIGKILL after a grace period), also when the wrapper's `timeout` sends SIGTERM.
Every wait is bounded by its own timeout and by the overall `--deadline`.
Exit status: 0 all checks passed, 1 a check failed, 2 set-up failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CHAT_PROMPT = "Say hello to the gateway in one sentence."
REASONING_PROMPT = "Is 17 a prime number? Think it through."
# Open WebUI's header of a reasoning block: "Thinking..." while it streams, "Thought for N seconds" after.
THOUGHT_RE = re.compile(r"Thought|Thinking")


class CheckFailed(Exception):
    """A check of the end-to-end run did not hold (exit 1)."""


class SetupFailed(Exception):
    """Something the checks need could not be started (exit 2)."""


def log(msg: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Clock:
    """The overall deadline; every wait asks it how long it may still take."""

    deadline: float

    def budget(self, want: float) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise CheckFailed("overall deadline reached")
        return min(want, left)


# --- processes -------------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    grace: float

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM the child's process group, wait `grace`, then SIGKILL the group."""
        pid = self.proc.pid
        if not self.alive():
            log(f"{self.name} (pid {pid}) already exited with {self.proc.returncode}")
            return
        log(f"stopping {self.name} (pid {pid})")
        _signal_group(pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=self.grace)
        except subprocess.TimeoutExpired:
            log(f"{self.name} (pid {pid}) ignored SIGTERM for {self.grace:.0f}s: SIGKILL")
            _signal_group(pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        # Anything still in the group (a grandchild that outlived its parent) goes too.
        _signal_group(pid, signal.SIGKILL)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    # Each child was started with start_new_session=True, so its pid is its process group id.
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


@dataclass
class Children:
    items: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str], *, cwd: Path, env: dict[str, str], log_path: Path,
              grace: float) -> Child:
        log(f"starting {name}: {' '.join(argv)}")
        with log_path.open("wb") as out:
            try:
                proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as e:
                raise SetupFailed(f"cannot start {name}: {e}") from None
        child = Child(name, proc, log_path, grace)
        self.items.append(child)
        log(f"{name} pid {proc.pid}, log {log_path}")
        return child

    def stop_all(self) -> None:
        # Open WebUI first (it talks to the gateway), the gateway last (it stops its engines).
        for child in reversed(self.items):
            try:
                child.stop()
            except Exception as e:  # keep stopping the others
                log(f"could not stop {child.name}: {e!r}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- HTTP ------------------------------------------------------------------------------------


def http_json(method: str, url: str, *, token: str | None = None, body: Any = None,
              timeout: float = 10.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_until(what: str, probe: Callable[[], Any], clock: Clock, timeout: float,
               watch: Child | None = None, interval: float = 0.5) -> Any:
    """Call `probe` until it returns a truthy value; fail after `timeout` or if `watch` exits."""
    end = time.monotonic() + clock.budget(timeout)
    last: Any = None
    while time.monotonic() < end:
        if watch is not None and not watch.alive():
            raise SetupFailed(f"{watch.name} exited ({watch.proc.returncode}) while waiting for {what}:\n"
                              f"{watch.tail()}")
        try:
            result = probe()
            if result:
                return result
            last = result
        except (OSError, urllib.error.URLError) as e:
            last = e
        time.sleep(interval)
    raise SetupFailed(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


# --- the gateway's ledger ----------------------------------------------------------------------


def usage_by_pool(gateway_url: str, admin_key: str) -> dict[str, int]:
    """Requests per pool from `GET /admin/usage?group_by=pool`.

    Accepts the rows as a JSON list or under any key (`rows`, `data`, ...): every object
    carrying `requests` and a group value (`pool`, else `group`/`value`) counts.
    """
    status, body = http_json("GET", f"{gateway_url}/admin/usage?group_by=pool", token=admin_key)
    if status != 200:
        raise CheckFailed(f"GET /admin/usage?group_by=pool -> {status}: {body}")
    out: dict[str, int] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            group = node.get("pool", node.get("group", node.get("value")))
            if "requests" in node and isinstance(group, str):
                out[group] = out.get(group, 0) + int(node["requests"])
                return
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(body)
    return out


# --- the browser -----------------------------------------------------------------------------


@dataclass
class Shots:
    directory: Path
    failure_dir: Path
    taken: list[Path] = field(default_factory=list)

    def take(self, page: Any, name: str, *, failure: bool = False) -> None:
        path = (self.failure_dir if failure else self.directory) / f"openwebui-{name}.png"
        page.screenshot(path=str(path), full_page=False)
        self.taken.append(path)
        log(f"screenshot {path}")


def dismiss_dialogs(page: Any) -> None:
    """The admin's first visit may open the "What's new" changelog; close it."""
    button = page.get_by_role("button", name="Okay, Let's Go!")
    if button.count() and button.first.is_visible():
        button.first.click()
    page.keyboard.press("Escape")


def open_new_chat(page: Any, base: str, email: str, password: str, clock: Clock) -> None:
    page.goto(f"{base}/", timeout=clock.budget(60) * 1000)
    if "/auth" in page.url:
        # The injected token was not taken: sign in through the form instead.
        log("token not accepted by the page; signing in through the form")
        page.fill("#email", email)
        page.fill("#password", password)
        page.locator('button[type="submit"]').first.click()
    page.wait_for_selector("#chat-input", timeout=clock.budget(90) * 1000)
    dismiss_dialogs(page)


def pick_model(page: Any, base: str, model: str, clock: Clock) -> str:
    """Choose `model` in the model selector next to the input; return how it was chosen."""
    trigger = page.locator("#model-selector-model-button")
    try:
        trigger.wait_for(state="visible", timeout=clock.budget(20) * 1000)
        trigger.click()
        search = page.locator("#model-search-input")
        if search.count():
            search.fill(model)
        option = page.locator(f'button[role="option"][data-value="{model}"]')
        option.first.wait_for(state="visible", timeout=clock.budget(20) * 1000)
        option.first.click()
        label = trigger.get_attribute("aria-label") or ""
        if model not in label and model not in (trigger.inner_text() or ""):
            raise CheckFailed(f"model selector shows {label!r} after choosing {model}")
        return "selector"
    except Exception as e:  # noqa: BLE001 - any UI drift: fall back to the documented URL parameter
        if isinstance(e, CheckFailed) and "deadline" in str(e):
            raise
        log(f"picking {model} in the selector failed ({type(e).__name__}: {str(e)[:200]}); using ?models=")
        page.goto(f"{base}/?models={model}", timeout=clock.budget(60) * 1000)
        page.wait_for_selector("#chat-input", timeout=clock.budget(60) * 1000)
        dismiss_dialogs(page)
        return "url"


@dataclass
class Answer:
    text: str
    growth_samples: int  # distinct lengths seen while the answer was still streaming
    seconds: float


def send_and_wait(page: Any, prompt: str, clock: Clock, timeout: float = 120,
                  on_partial: Callable[[], None] | None = None) -> Answer:
    """Type `prompt`, send it, and wait until the assistant message is complete.

    Samples the rendered text while it streams: tokens reach the browser over Open WebUI's
    websocket, so only the page shows whether the answer arrived incrementally.
    `on_partial` runs once, at the first partial rendering (to screenshot it).
    """
    page.locator("#chat-input").click()
    page.keyboard.type(prompt)
    page.locator("#send-message-button").click()
    t0 = time.monotonic()
    assistant = page.locator(".chat-assistant").last
    assistant.wait_for(state="attached", timeout=clock.budget(60) * 1000)
    lengths: set[int] = set()
    end = t0 + clock.budget(timeout)
    while time.monotonic() < end:
        text = assistant.inner_text()
        done = page.locator(".copy-response-button").count() > 0
        if not done and text.strip():
            if not lengths and on_partial is not None:
                on_partial()
            lengths.add(len(text))
        if done:
            # Background task requests (title, tags, follow-ups) still run: wait for the
            # Stop button to go, so the screenshots show the settled page.
            page.locator('button[aria-label="Stop"]').wait_for(state="hidden", timeout=15_000)
            return Answer(assistant.inner_text().strip(), len(lengths), time.monotonic() - t0)
        time.sleep(0.05)
    raise CheckFailed(f"no complete answer within {timeout:.0f}s; rendered so far: {assistant.inner_text()[:300]!r}")


def reasoning_block(page: Any) -> Any:
    """The collapsible reasoning header of the last assistant message (or None)."""
    header = page.locator(".chat-assistant").last.locator("button[aria-expanded]").filter(
        has_text=THOUGHT_RE)
    return header.first if header.count() else None


def chat_message_from_api(base: str, token: str, clock: Clock) -> dict[str, Any]:
    """The last assistant message of the most recent chat, as Open WebUI stored it."""
    status, chats = http_json("GET", f"{base}/api/v1/chats/", token=token, timeout=clock.budget(15))
    if status != 200 or not isinstance(chats, list) or not chats:
        raise CheckFailed(f"GET /api/v1/chats/ -> {status}: {str(chats)[:300]}")
    chat_id = chats[0]["id"]
    status, chat = http_json("GET", f"{base}/api/v1/chats/{chat_id}", token=token, timeout=clock.budget(15))
    if status != 200 or not isinstance(chat, dict):
        raise CheckFailed(f"GET /api/v1/chats/{chat_id} -> {status}")
    messages = (chat.get("chat") or {}).get("history", {}).get("messages", {})
    assistants = [m for m in messages.values() if m.get("role") == "assistant"]
    if not assistants:
        raise CheckFailed(f"chat {chat_id} has no assistant message")
    return max(assistants, key=lambda m: m.get("timestamp", 0))


def stored_reasoning(msg: dict[str, Any]) -> tuple[str, str]:
    """(reasoning, answer) as stored: `output` items in 0.12, `<details type="reasoning">` before."""
    reasoning, answer = "", ""
    for item in msg.get("output") or []:
        texts = "".join(part.get("text", "") for part in item.get("content") or [] if isinstance(part, dict))
        if item.get("type") == "reasoning":
            reasoning += texts
        elif item.get("type") == "message":
            answer += texts
    content = msg.get("content") or ""
    if not reasoning and '<details type="reasoning"' in content:
        m = re.search(r'<details type="reasoning"[^>]*>(.*?)</details>(.*)', content, re.S)
        if m:
            reasoning, answer = m.group(1), m.group(2)
    return reasoning.strip(), (answer or content).strip()


# --- the run ---------------------------------------------------------------------------------


def browser_steps(args: argparse.Namespace, base: str, token: str, email: str, password: str,
                  shots: Shots, clock: Clock) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright  # installed in the e2e venv only

    report: dict[str, Any] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 900})
            context.add_init_script(f"window.localStorage.setItem('token', {json.dumps(token)});")
            page = context.new_page()
            page.set_default_timeout(30_000)
            try:
                # Chat model: streamed answer rendered.
                open_new_chat(page, base, email, password, clock)
                report["chat_pick"] = pick_model(page, base, args.chat_model, clock)
                shots.take(page, "01-chat-model-selected")
                ans = send_and_wait(page, CHAT_PROMPT, clock,
                                    on_partial=lambda: shots.take(page, "02-chat-streaming"))
                log(f"chat answer in {ans.seconds:.1f}s, {ans.growth_samples} partial renderings: {ans.text[:120]!r}")
                if not ans.text:
                    raise CheckFailed("the chat answer rendered empty")
                stored = chat_message_from_api(base, token, clock)
                if stored.get("error"):
                    raise CheckFailed(f"Open WebUI stored an error for the chat answer: {stored['error']}")
                shots.take(page, "03-chat-answer")
                report["chat"] = {"text": ans.text[:500], "partial_renderings": ans.growth_samples,
                                  "seconds": round(ans.seconds, 2)}

                # Reasoning model: the reasoning block apart from the answer.
                open_new_chat(page, base, email, password, clock)
                report["reasoning_pick"] = pick_model(page, base, args.reasoning_model, clock)
                ans = send_and_wait(page, REASONING_PROMPT, clock)
                header = reasoning_block(page)
                if header is None:
                    raise CheckFailed(f"no reasoning block rendered; the message reads: {ans.text[:300]!r}")
                header_text = header.inner_text().strip()
                if "<think>" in ans.text or "</think>" in ans.text:
                    raise CheckFailed(f"think tags leaked into the rendered answer: {ans.text[:300]!r}")
                shots.take(page, "04-reasoning-collapsed")
                header.click()
                page.wait_for_timeout(500)  # the collapsible's open transition
                shots.take(page, "05-reasoning-expanded")
                stored = chat_message_from_api(base, token, clock)
                reasoning, answer = stored_reasoning(stored)
                if not reasoning:
                    raise CheckFailed("Open WebUI stored no reasoning for the reasoning model's answer")
                if not answer or "</think>" in answer:
                    raise CheckFailed(f"answer missing or still carrying </think>: {answer[:300]!r}")
                report["reasoning"] = {"header": header_text, "reasoning": reasoning[:300], "answer": answer[:300],
                                       "partial_renderings": ans.growth_samples, "seconds": round(ans.seconds, 2)}
                log(f"reasoning block {header_text!r}; reasoning {len(reasoning)} chars, answer {answer[:80]!r}")
            except Exception:
                try:  # the page as it was, for the log; never mask the failure itself
                    shots.take(page, "failure", failure=True)
                except Exception as e:  # noqa: BLE001
                    log(f"no failure screenshot: {e!r}")
                raise
        finally:
            browser.close()
    return report


def run(args: argparse.Namespace, children: Children) -> dict[str, Any]:
    clock = Clock(time.monotonic() + args.deadline)
    run_dir = Path(args.work_dir) / "runs" / time.strftime("%Y%m%d-%H%M%S")
    for d in (run_dir / "gateway", run_dir / "webui" / "data"):
        d.mkdir(parents=True, exist_ok=True)
    shots = Shots(Path(args.screenshots).resolve(), run_dir)
    shots.directory.mkdir(parents=True, exist_ok=True)
    log(f"run directory {run_dir}")

    # 1. The gateway on the demo config. Its working directory is the run directory, so the
    #    config's relative paths (sqlite ledger, engine logs) land there, not in the repo.
    if args.gateway_url:
        gateway_url, gateway = args.gateway_url.rstrip("/"), None
    else:
        port = free_port()
        gateway_url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "GATEWAY_ADMIN_KEY": args.admin_key, "GATEWAY_CLIENT_KEY": args.client_key}
        gateway = children.start(
            "gateway",
            [args.gateway_python, "-m", "gateway.cli", "serve", "--config", args.config,
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=run_dir / "gateway", env=env, log_path=run_dir / "gateway.log", grace=45)
    wait_until("gateway /health", lambda: http_json("GET", f"{gateway_url}/health", timeout=3)[0] == 200,
               clock, 60, gateway)
    for model in (args.chat_model, args.reasoning_model):
        # Engines start in the background: wait until each pool answers before the UI uses it.
        wait_until(f"a first answer from {model}", lambda m=model: http_json(
            "POST", f"{gateway_url}/v1/chat/completions", token=args.client_key, timeout=30,
            body={"model": m, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 4})[0] == 200,
            clock, 180, gateway, interval=1.0)
    # The ledger is written in batches (every second or so): take the "before" snapshot once the
    # pre-flight requests above are in it and it stopped changing, or the UI check could count them.
    seen: list[dict[str, int]] = []

    def settled() -> dict[str, int] | None:
        seen.append(usage_by_pool(gateway_url, args.admin_key))
        pools_in = all(seen[-1].get(p, 0) > 0 for p in (args.chat_model, args.reasoning_model))
        return seen[-1] if pools_in and len(seen) > 1 and seen[-1] == seen[-2] else None

    before = wait_until("the pre-flight requests in the ledger", settled, clock, 30, gateway, interval=1.5)
    log(f"gateway ready at {gateway_url}; ledger before the UI: {before}")

    # 2. Open WebUI, offline, fresh data directory, scratch working directory.
    webui_port = free_port()
    base = f"http://127.0.0.1:{webui_port}"
    env = {
        **os.environ,
        "OPENAI_API_BASE_URL": f"{gateway_url}/v1",
        "OPENAI_API_KEY": args.client_key,
        "ENABLE_OLLAMA_API": "False",
        "OFFLINE_MODE": "True",
        "HF_HUB_OFFLINE": "1",
        "DATA_DIR": str(run_dir / "webui" / "data"),
        "ENABLE_PERSISTENT_CONFIG": "False",
        "ENABLE_FORWARD_USER_INFO_HEADERS": "true",
        "WEBUI_SECRET_KEY": "e2e-" + os.urandom(16).hex(),
        "ANONYMIZED_TELEMETRY": "False",
        "DO_NOT_TRACK": "true",
        "SCARF_NO_ANALYTICS": "true",
    }
    webui = children.start("open-webui", [args.open_webui, "serve", "--host", "127.0.0.1", "--port", str(webui_port)],
                           cwd=run_dir / "webui", env=env, log_path=run_dir / "open-webui.log", grace=20)
    wait_until("Open WebUI /health", lambda: http_json("GET", f"{base}/health", timeout=3)[0] == 200,
               clock, 240, webui, interval=1.0)
    log(f"Open WebUI ready at {base}")

    # 3. The admin, through Open WebUI's API (the first user to sign up is admin).
    email, password = "admin@example.com", "e2e-" + os.urandom(8).hex()
    status, body = http_json("POST", f"{base}/api/v1/auths/signup", timeout=clock.budget(30),
                             body={"name": "E2E Admin", "email": email, "password": password})
    if status != 200 or not isinstance(body, dict) or not body.get("token") or body.get("role") != "admin":
        raise SetupFailed(f"signup -> {status}: {str(body)[:300]}")
    token = body["token"]
    # The changelog would cover the page on the admin's first visit.
    http_json("POST", f"{base}/api/v1/users/user/settings/update", token=token,
              body={"ui": {"showChangelog": False}}, timeout=clock.budget(15))

    def listed() -> bool:
        status, models = http_json("GET", f"{base}/api/models", token=token, timeout=15)
        ids = {m.get("id") for m in (models or {}).get("data", [])} if isinstance(models, dict) else set()
        return status == 200 and {args.chat_model, args.reasoning_model} <= ids

    wait_until("the gateway's models in Open WebUI", listed, clock, 60, webui, interval=2.0)

    # 4. The browser.
    report = browser_steps(args, base, token, email, password, shots, clock)

    # 5. The gateway's ledger: both pools got records from the UI's requests.
    def grew() -> dict[str, int] | None:
        after = usage_by_pool(gateway_url, args.admin_key)
        ok = all(after.get(p, 0) > before.get(p, 0) for p in (args.chat_model, args.reasoning_model))
        return after if ok else None

    try:
        after = wait_until("usage records for both pools", grew, clock, 20, interval=1.0)
    except SetupFailed as e:
        raise CheckFailed(f"{e}; ledger before {before}, now {usage_by_pool(gateway_url, args.admin_key)}") from None
    log(f"ledger after the UI: {after}")
    report.update(gateway=gateway_url, webui=base, usage_before=before, usage_after=after,
                  screenshots=[str(p) for p in shots.taken], run_dir=str(run_dir))
    (run_dir / "summary.json").write_text(json.dumps(report, indent=2))
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(Path(__file__).resolve().parent.parent), help="the repository")
    p.add_argument("--work-dir", default="var/e2e", help="scratch directory (runs/<time>/ per run)")
    p.add_argument("--config", default="config/demo.yaml", help="gateway config, relative to --root")
    p.add_argument("--gateway-python", default=".venv/bin/python", help="interpreter with the gateway installed")
    p.add_argument("--gateway-url", help="use this running gateway instead of starting one")
    p.add_argument("--open-webui", default="var/e2e/venv/bin/open-webui")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--screenshots", default="docs/screenshots")
    p.add_argument("--client-key", default=os.environ.get("GATEWAY_CLIENT_KEY", "sk-demo-key"))
    p.add_argument("--admin-key", default=os.environ.get("GATEWAY_ADMIN_KEY", "sk-demo-admin"))
    p.add_argument("--chat-model", default="qwen3-8b")
    p.add_argument("--reasoning-model", default="deepseek-r1")
    p.add_argument("--deadline", type=float, default=840, help="seconds for the whole run")
    args = p.parse_args(argv)
    # Relative paths are relative to the repository, wherever the script is run from.
    args.root = str(Path(args.root).resolve())
    for name in ("work_dir", "gateway_python", "open_webui", "screenshots", "config"):
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
        report = run(args, children)
        log("PASS: " + json.dumps({k: report[k] for k in ("chat_pick", "reasoning_pick", "usage_after")}))
        return 0
    except CheckFailed as e:
        log(f"FAIL: {e}")
        return 1
    except SetupFailed as e:
        log(f"SETUP FAILED: {e}")
        return 2
    finally:
        children.stop_all()
        left = [c for c in children.items if c.alive()]
        log("all started processes stopped" if not left else f"still alive: {[c.proc.pid for c in left]}")


if __name__ == "__main__":
    sys.exit(main())

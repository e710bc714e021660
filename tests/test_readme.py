"""The README as a newcomer runs it: the Quick start commands are CI's, and First steps run as printed against the
real server process (only its port differs, so that parallel runs never collide on 8000)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

from tests.server_process import CLI_TIMEOUT, REPO_ROOT, ServerProcess

README: Final = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
FRAME_TIMEOUT: Final = 15.0  # seconds for an expected frame to reach ws_client.py's output
BARE_PYTHON_RE: Final = re.compile(r"(?<![\w./-])python(?![\w.])")  # `python`, which Debian 12 does not have


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end >= 0 else None]


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def test_quick_start_is_what_ci_runs_and_needs_no_python_command() -> None:
    serve, tests = blocks(section("Quick start"), "sh")
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "set -euo pipefail" in ci
    assert tests.strip() in ci.splitlines(), "the README's test command must be .ci/run's, verbatim"
    assert blocks(section("Testing"), "sh") == [tests]
    for command in (serve, tests):
        assert len(command.strip().splitlines()) == 1
        assert command.startswith("python3 -m venv .venv && .venv/bin/pip install")  # PEP 668: never system pip
        assert not BARE_PYTHON_RE.search(command), command
    assert serve.strip().endswith(".venv/bin/python run.py")


def test_every_command_shown_avoids_the_missing_python_and_silent_curl_files() -> None:
    shown = blocks(README, "sh") + blocks(README, "console") + re.findall(r"`([^`\n]+)`", README)
    lines = [line for text in shown for line in text.replace("\\\n", " ").splitlines()]
    for command in lines:
        if "curl" in command and re.search(r"\s-o\s", command):
            assert re.search(r"\s-f|--fail", command), f"an error body would land in the file: {command}"
    for command in blocks(section("First steps"), "sh"):
        assert not BARE_PYTHON_RE.search(command), command


async def _wait_for(path: Path, needle: str, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + FRAME_TIMEOUT
    while time.monotonic() < deadline:
        text = path.read_text(encoding="utf-8", errors="replace")
        if needle in text:
            return text
        assert proc.poll() is None, f"ws_client.py exited early:\n{text}"
        await asyncio.sleep(0.05)
    raise AssertionError(f"{needle!r} never reached ws_client.py's output:\n{path.read_text(encoding='utf-8')}")


def _bash(script: str, server: ServerProcess, env: dict[str, str]) -> str:
    done = subprocess.run(["bash", "-c", script], cwd=server.cwd, env=env, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT)
    assert done.returncode == 0, f"{script}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert '"detail"' not in done.stdout, f"an error answer:\n{done.stdout}"  # curl -s exits 0 on 4xx
    return done.stdout


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def test_first_steps_run_as_printed(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")
    work = server.cwd  # the newcomer's checkout: run.py, examples/ and the Quick start's .venv/bin/python
    for name in ("run.py", "examples"):
        (work / name).symlink_to(REPO_ROOT / name)
    venv_python = work / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n', encoding="utf-8")
    venv_python.chmod(0o755)
    steps = section("First steps")
    [client_source] = blocks(steps, "python")
    (work / "ws_client.py").write_text(client_source, encoding="utf-8")
    commands = [c.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}") for c in blocks(steps, "sh")]
    socket_at = next(i for i, c in enumerate(commands) if "ws_client.py" in c)
    env = server.env()
    client_out, client_err = work / "ws_client.out", work / "ws_client.err"
    client = None
    try:
        await server.start()
        # Steps 1-4 in one shell, as typed in one terminal; the variables they set go on to the next terminals.
        _bash("set -eo pipefail\n" + "\n".join(commands[:socket_at]) + "\ndeclare -p KEY TOKEN > vars.sh",
              server, env)
        with open(client_out, "wb") as out, open(client_err, "wb") as err:
            # Its own session, so that Ctrl+C can be sent to its process group as a terminal does; SIGINT at its
            # default as in a terminal (a test run started in the background inherits it ignored).
            client = subprocess.Popen(["bash", "-c", "source vars.sh\n" + commands[socket_at]], cwd=work,
                                      env=env, stdout=out, stderr=err, start_new_session=True,
                                      preexec_fn=_default_sigint)
        first = await _wait_for(client_out, '"type":"pong"', client)
        status = json.loads(first.splitlines()[0])
        assert status["type"] == "status" and status["state"] == "idle"  # step 4 switched auto_connect off
        _bash("set -eo pipefail\nsource vars.sh\n" + "\n".join(commands[socket_at + 1:]), server, env)
        frames = await _wait_for(client_out, '"type":"gift"', client)
        chat = next(json.loads(line) for line in frames.splitlines() if '"type":"chat"' in line)
        assert chat["user"] == "Anna" and chat["tts_url"].startswith(server.url + "/static/tts/")
        assert chat["volume"] == 80  # step 4's tts_volume
        [shown] = [json.loads(b) for b in blocks(steps, "json") if '"type":"chat"' in b]
        assert set(shown) == set(chat) and {k: v for k, v in shown.items() if k not in ("ts", "tts_url")} == {
            k: v for k, v in chat.items() if k not in ("ts", "tts_url")}, "the README shows another frame"
        gift = next(json.loads(line) for line in frames.splitlines() if '"type":"gift"' in line)
        assert gift["sound_url"] == f"{server.url}/static/sounds/1/rose.mp3" and gift["volume"] == 100
        os.killpg(client.pid, signal.SIGINT)  # Ctrl+C
        assert await asyncio.to_thread(client.wait, 10) == 0
        assert client_err.read_text(encoding="utf-8") == ""  # quietly: no KeyboardInterrupt traceback
    finally:
        if client is not None and client.poll() is None:
            os.killpg(client.pid, signal.SIGKILL)
            client.wait()
        server.stop()

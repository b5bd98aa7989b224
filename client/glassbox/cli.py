"""The ``glassbox`` command: run a local service for a class or a lab, and look at one.

    glassbox up [--model PATH --name NAME ...] [--port 5555] [--dev] [--data DIR]
                [--worker-bind ADDRESS] [--restart-delay SECONDS]
    glassbox status [--url URL] [--api-key KEY]
    glassbox models [--url URL] [--api-key KEY] [--json]
    glassbox keys create --name NAME [--max-queued N --max-running N --max-request-bytes N]
    glassbox keys list | glassbox keys revoke ID

``up`` starts redis-server (append-only files under the data directory, by default
~/.cache/glassbox), glassbox-broker and one ``glassbox-engine serve`` worker per model
(SmolLM2 as "smollm2-135m" unless ``--model PATH --name NAME`` is given, once per model),
prints how to connect (a URL other machines can use, with an API key, unless --dev), and
stays in the foreground until Ctrl-C, which stops them all; a worker that exits meanwhile is
started again after a back-off. One ``up`` per data directory (it is locked). ``keys`` wraps
``glassbox-broker keys`` for the data directory's Redis (that of the ``up`` running on it, or
one started on its files for the command) or the Redis given with --redis.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from typing import List, Optional, Tuple

from . import launcher
from .errors import GlassboxError
from .service import DEFAULT_URL, ServiceBackend

_KEY_NAME = "glassbox-up"


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except GlassboxError as e:
        print(f"glassbox: {e}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glassbox", description="Run a local Glassbox service for a class or a lab, and "
        "look at one.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    up = commands.add_parser("up", help="start a local service (Redis, broker, a worker per "
                             "model)")
    up.add_argument("--model", action="append", help="a .gguf file or a Hugging Face "
                    f"directory; repeat it to serve several (default: {launcher.DEFAULT_MODEL})")
    up.add_argument("--name", action="append", help="the model's name for clients, one per "
                    "--model in the same order (default for one model: smollm2-135m)")
    up.add_argument("--device", default="auto", help="where the workers keep their models: "
                    "cpu, cuda, cuda:N, or auto (CUDA when the build and machine have it; "
                    "default: %(default)s)")
    up.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                    help="the dtype the weights are held in (default: %(default)s; bfloat16 "
                    "halves their memory)")
    up.add_argument("--batch-slots", type=int, default=4, help="jobs each worker takes at "
                    "once; jobs of different users share forward passes and generations "
                    "(README: batching; default: %(default)s, 1: one job at a time)")
    up.add_argument("--port", type=int, default=5555, help="the clients' port")
    up.add_argument("--worker-port", type=int, default=0, help="the workers' port (port + 1)")
    up.add_argument("--data", default=str(launcher.DEFAULT_DATA_DIR),
                    help="Redis files, logs and the API key (default: %(default)s)")
    up.add_argument("--dev", action="store_true", help="no API keys; listen on 127.0.0.1 only")
    up.add_argument("--encrypt", action="store_true", help="encrypt client connections "
                    "(CURVE); clients need the server key it prints")
    up.add_argument("--bind", default="", help="the clients' interface (default: all; "
                    "127.0.0.1 with --dev)")
    up.add_argument("--worker-bind", default="127.0.0.1", help="the workers' interface "
                    "(default: %(default)s, this machine only); '*' lets workers on other "
                    "machines connect; workers authenticate with the CURVE keys in "
                    "DATA/worker-keys (README: a worker on another machine)")
    up.add_argument("--restart-delay", type=float, default=1.0, help="seconds before a worker "
                    "that exited is started again, doubled for each exit in a row (default: "
                    "%(default)s)")
    up.add_argument("--max-restart-delay", type=float, default=60.0, help="the longest wait "
                    "before a restart (default: %(default)s)")
    up.set_defaults(run=_up)
    for name, run, text in (("status", _status, "is the service up; its models and workers"),
                            ("models", _models, "the models the service serves")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--url", default=None, help=f"default: $GLASSBOX_URL or {DEFAULT_URL}")
        sub.add_argument("--api-key", default=None, help="default: $GLASSBOX_API_KEY")
        sub.add_argument("--server-key", default=None, help="the broker's CURVE public key or "
                         "its .pub file (default: $GLASSBOX_SERVER_KEY)")
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        sub.add_argument("--timeout", type=float, default=5.0,
                         help="seconds to wait for the broker (default: %(default)s)")
        sub.set_defaults(run=run)
    _add_keys(commands)
    return parser


def _add_keys(commands) -> None:
    keys = commands.add_parser("keys", help="API keys (wraps glassbox-broker keys)")
    keys.add_argument("--redis", default=None, help="Redis host:port (default: the Redis of "
                      "--data: the running `glassbox up`'s, or one started on its files)")
    keys.add_argument("--data", default=str(launcher.DEFAULT_DATA_DIR))
    actions = keys.add_subparsers(required=True, metavar="ACTION")
    create = actions.add_parser("create", help="make a key; prints its secret once")
    create.add_argument("--name", required=True, help="who the key is for")
    for limit in ("--max-queued", "--max-running", "--max-request-bytes"):
        create.add_argument(limit, type=int, default=None)
    create.set_defaults(run=_keys_create)
    actions.add_parser("list", help="keys with limits and usage").set_defaults(
        run=lambda a: _broker_keys(a, ["list"]))
    revoke = actions.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id")
    revoke.set_defaults(run=lambda a: _broker_keys(a, ["revoke", a.id]))


# glassbox up ---------------------------------------------------------------------------------


def _up(args) -> int:
    (path, name), *more = _served_models(args.model, args.name)
    params = launcher.ServiceParams(model_path=path, model_name=name, more_models=tuple(more),
                                    port=args.port, worker_port=args.worker_port,
                                    data_dir=args.data, dev=args.dev, bind=args.bind,
                                    encrypt=args.encrypt, worker_bind=args.worker_bind,
                                    restart_delay=args.restart_delay,
                                    max_restart_delay=args.max_restart_delay,
                                    engine_args=("--threads", "1", "--device", args.device,
                                                 "--dtype", args.dtype,
                                                 "--batch-slots", str(args.batch_slots)))
    stop = _stop_on_signals()
    service = launcher.LocalService(params)
    service.check()
    service.lock()  # refused: nothing of the running service's is touched
    names = ", ".join(n for _, n in params.models)
    print(f"glassbox: starting Redis, the broker and a worker of {names} "
          f"(logs in {service.log_dir}) ...", flush=True)
    try:
        service.start()
        server_key = _server_key(service)
        key = "" if args.dev else _service_key(service, server_key)
        _wait_for_worker(service, key, server_key, stop)
        _write_service_file(service, key)
        print(_how_to_connect(params, key, server_key), flush=True)
        return _serve_until_stopped(service, key, stop)
    finally:
        print("glassbox: stopping the worker, the broker and Redis ...", flush=True)
        service.stop()
        print("glassbox: stopped", flush=True)


def _served_models(paths: Optional[List[str]],
                   names: Optional[List[str]]) -> List[Tuple[str, str]]:
    """(path, name) for each --model and the --name in the same place; one model may go
    without --name (or without --model: SmolLM2) and takes the default."""
    paths = paths or [str(launcher.DEFAULT_MODEL)]
    if names is None and len(paths) == 1:
        names = ["smollm2-135m"]
    if names is None or len(names) != len(paths):
        raise GlassboxError("INVALID_ARGUMENT", f"give one --name per --model ({len(paths)} "
                            f"model(s), {len(names or [])} name(s)), in the same order")
    return list(zip(paths, names))


def _stop_on_signals() -> List[int]:
    """SIGINT / SIGTERM append themselves to the returned list instead of raising."""
    received: List[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, frame: received.append(number))
    return received


def _server_key(service: launcher.LocalService) -> str:
    """The broker's CURVE public key when it encrypts, else ""."""
    if not service.params.encrypt:
        return ""
    return service.server_key_path.read_text().strip()


def _service_key(service: launcher.LocalService, server_key: str) -> str:
    """The API key `up` made before (kept in the data directory), if Redis still knows it;
    otherwise a new one."""
    path = service.data_dir / "api_key"
    if path.is_file():
        key = path.read_text().strip()
        if _key_works(service.params.url, key, server_key):
            return key
    key = service.create_key(_KEY_NAME)
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


def _key_works(url: str, key: str, server_key: str) -> bool:
    backend = ServiceBackend(url, key, call_timeout=5, connect_timeout=5,
                             server_key=server_key)
    try:
        backend.models()
        return True
    except GlassboxError as e:
        return e.code != "UNAUTHENTICATED"
    finally:
        backend.close()


def _wait_for_worker(service: launcher.LocalService, key: str, server_key: str,
                     stop: List[int], timeout: float = 180) -> None:
    backend = ServiceBackend(service.params.url, key, call_timeout=5, connect_timeout=5,
                             server_key=server_key)
    deadline = time.monotonic() + timeout
    try:
        while not stop and time.monotonic() < deadline:
            dead = service.dead_process()
            if dead:
                raise GlassboxError("UNAVAILABLE", f"a process exited; see {dead}:\n"
                                    + launcher.tail(dead))
            serving = {m.name for m in backend.models() if m.workers}
            if all(name in serving for _, name in service.params.models):
                return
            time.sleep(0.2)
        if not stop:
            raise GlassboxError("UNAVAILABLE", f"not every worker registered within "
                                f"{timeout:g} s (logs in {service.log_dir})")
    finally:
        backend.close()


def _write_service_file(service: launcher.LocalService, key: str) -> None:
    service.write_state(model=service.params.model_name,
                        models=[name for _, name in service.params.models], dev=not key,
                        workers={w.name: w.process.pid for w in service.workers})


def _how_to_connect(params: launcher.ServiceParams, key: str, server_key: str) -> str:
    names = ", ".join(name for _, name in params.models)
    lines = [f"glassbox: serving {names} at {params.public_url}"]
    exports = [f"GLASSBOX_URL={params.public_url}"]
    if key:
        lines.append(f"  API key: {key}   (more: glassbox keys create --name STUDENT)")
        exports.append(f"GLASSBOX_API_KEY={key}")
    else:
        lines.append("  development mode: no API keys, 127.0.0.1 only")
    if server_key:
        lines.append(f"  server key (connections are encrypted): {server_key}")
        exports.append(f"GLASSBOX_SERVER_KEY='{server_key}'")
    lines += ["  export " + " ".join(exports), "  in Python:", "    import glassbox",
              f'    model = glassbox.Model("{params.model_name}")   # with the exports above',
              "Ctrl-C stops the service."]
    return "\n".join(lines)


def _serve_until_stopped(service: launcher.LocalService, key: str, stop: List[int]) -> int:
    """Supervises until a signal: workers that exit are restarted (logged); Redis or the
    broker exiting ends the service (1)."""
    while not stop:
        try:
            lines = service.supervise(time.monotonic())
        except GlassboxError as e:
            print(f"glassbox: {e.message}", file=sys.stderr)
            return 1
        for line in lines:
            print(line, file=sys.stderr, flush=True)
        if lines:
            _write_service_file(service, key)
        time.sleep(0.2)
    return 0


# glassbox status / models --------------------------------------------------------------------


def _list_models(args):
    backend = ServiceBackend(args.url, args.api_key, call_timeout=args.timeout,
                             server_key=args.server_key)
    try:
        return backend.url, backend.models()
    finally:
        backend.close()


def _status(args) -> int:
    url = args.url or os.environ.get("GLASSBOX_URL") or DEFAULT_URL
    try:
        url, models = _list_models(args)
    except GlassboxError as e:
        print(f"broker at {url}: {'up, but ' if e.code == 'UNAUTHENTICATED' else 'not reachable: '}"
              f"{e.message}")
        return 1
    if args.json:
        print(json.dumps({"url": url, "up": True, "models": [
            {"name": m.name, "workers": m.workers, "slots": m.slots, "running": m.running,
             "queued": m.queued} for m in models]}))
        return 0
    workers = sum(m.workers for m in models)
    print(f"broker at {url}: up; {len(models)} model(s), {workers} worker(s)")
    for m in models:
        # Batch occupancy: the jobs running over the slots of the model's workers.
        print(f"  {m.name:24} {m.workers} worker(s)  {m.running}/{m.slots} batch slots busy  "
              f"{m.queued} queued")
    return 0


def _models(args) -> int:
    url, models = _list_models(args)
    rows = [_model_row(m) for m in models]
    if args.json:
        print(json.dumps(rows))
        return 0
    for row in rows:
        print(f"{row['name']:24} {row['layers']} layers  {row['hook_points']} hook points  "
              f"{row['workers']} worker(s)  {row['queued']} queued")
    if not rows:
        print(f"no models at {url} (no worker has registered yet)")
    return 0


def _model_row(model) -> dict:
    catalogue = json.loads(model.catalogue or "{}")
    return {"name": model.name, "workers": model.workers, "queued": model.queued,
            "layers": catalogue.get("model", {}).get("num_layers"),
            "hook_points": len(catalogue.get("hook_points", []))}


# glassbox keys -------------------------------------------------------------------------------


def _keys_create(args) -> int:
    limits = []
    for flag in ("max_queued", "max_running", "max_request_bytes"):
        if getattr(args, flag) is not None:
            limits += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    return _broker_keys(args, ["create", "--name", args.name, *limits])


def _broker_keys(args, action: List[str]) -> int:
    """Runs ``glassbox-broker keys`` on --redis, else on the Redis of --data (see
    launcher.redis_of: it works whether or not a service runs there)."""
    binary = launcher.find_binary("glassbox-broker")
    if args.redis:
        return subprocess.call([binary, "keys", "--redis", args.redis, *action])
    with launcher.redis_of(args.data) as redis:
        return subprocess.call([binary, "keys", "--redis", redis, *action])


if __name__ == "__main__":
    sys.exit(main())

"""robalign serve-openai --model hf:DIR|scripted [--port P] [fault rates]

A local OpenAI-compatible chat server (POST /v1/chat/completions, GET /v1/models, GET /stats)
for tests and offline runs:

  robalign serve-openai --model hf:runs/tiny/nano --port 8011 --fault-429 0.2 --fault-slow 0.05
  robalign generate --model openai:local@http://127.0.0.1:8011/v1 --data prompts.csv --out out.csv
"""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="hf:DIR (answers from a local model) or scripted")
    p.add_argument("--script", default=None,
                   help="scripted replies: JSON/YAML file, either a list (cycled) or {substring: reply} "
                        "(first key found in the last user message wins)")
    p.add_argument("--default-reply", default="Scripted reply to: {prompt}",
                   help="scripted reply when nothing in --script matches ({prompt} is filled in)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (keep it local)")
    p.add_argument("--port", type=int, default=8011, help="0 = any free port (printed at start)")
    p.add_argument("--model-name", default="local-model", help="name returned by GET /v1/models")
    p.add_argument("--fault-429", type=float, default=0.0, help="rate of HTTP 429 answers")
    p.add_argument("--fault-500", type=float, default=0.0, help="rate of HTTP 500 answers")
    p.add_argument("--fault-slow", type=float, default=0.0, help="rate of answers delayed by --slow-seconds")
    p.add_argument("--fault-malformed", type=float, default=0.0, help="rate of truncated JSON bodies")
    p.add_argument("--slow-seconds", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0, help="fault RNG seed")


def _responder(args):
    from pathlib import Path

    import yaml

    from robalign.errors import UserError
    from robalign.evaluation.server import HFResponder, ScriptedResponder

    if args.model.startswith("hf:"):
        return HFResponder(args.model[3:])
    if args.model != "scripted":
        raise UserError(f"--model '{args.model}': use hf:DIR or scripted")
    replies = None
    if args.script:
        path = Path(args.script)
        if not path.is_file():
            raise UserError(f"--script {path} does not exist")
        replies = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
        if not isinstance(replies, list | dict):
            raise UserError(f"--script {path}: expected a list of replies or a mapping substring -> reply")
    return ScriptedResponder(replies, default=args.default_reply)


def run(args) -> int:
    from robalign.errors import UserError
    from robalign.evaluation.server import Faults, LocalOpenAIServer

    try:
        faults = Faults(args.fault_429, args.fault_500, args.fault_slow, args.fault_malformed,
                        slow_seconds=args.slow_seconds, seed=args.seed)
    except ValueError as exc:
        raise UserError(f"--fault-*: {exc}") from None
    server = LocalOpenAIServer(_responder(args), faults, host=args.host, port=args.port, model_name=args.model_name)
    print(f"serving {args.model} at {server.base_url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        print(f"requests: {server.stats()}", flush=True)
        server.stop()
    return 0

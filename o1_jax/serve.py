"""`python -m o1_jax.serve --model WORKDIR_OR_HF [--host 127.0.0.1 --port 8000]`: the OpenAI API over a model.

    python -m o1_jax.serve --model /tmp/o1_demo --port 8000 --api_key "$KEY"
    curl -s localhost:8000/v1/embeddings -H "Authorization: Bearer $KEY" \\
        -d '{"input": ["kamo rizel lives in oslo ."], "model": "/tmp/o1_demo"}'

`--model` is any model spec `O1Embedder.from_pretrained` takes (a training workdir, an HF or export
folder, shipped:NAME); it is also the served model name unless `--served_model_name` is given.
Routes, the o1_jax extensions of /v1/embeddings (input_type, num_thoughts, seed, return_thoughts),
batching and errors: o1_jax/inference/server.py. The API key comes from `--api_key` or the
environment variable O1_JAX_API_KEY (none: the server is open). Bad flags, a model that cannot be
loaded or a port in use stop with one `error:` line and exit code 2, before the model is loaded
where they can. Ctrl-C (SIGINT) finishes the requests in flight and exits 0; SIGTERM does the same,
then ends the process by that signal, as uvicorn does.
"""

from __future__ import annotations

import argparse
import os
import sys

from o1_jax import cli
from o1_jax.inference import server
from o1_jax.inference.embedder import O1Embedder

API_KEY_ENV = "O1_JAX_API_KEY"


def parse(argv=None) -> argparse.Namespace:
    p = cli.ArgumentParser(prog="python -m o1_jax.serve", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="training workdir, HF / export folder or shipped:NAME")
    p.add_argument("--served_model_name", default=None, help="the name clients send as `model` (default: --model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api_key", default=None, help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV})")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--max_batch_size", type=int, default=32,
                   help="inputs (embeddings) or generated rows (completions) per model call")
    p.add_argument("--batch_window_ms", type=float, default=5.0,
                   help="how long a request waits for others to share its model call")
    p.add_argument("--max_inputs", type=int, default=2048, help="inputs or prompts per request")
    p.add_argument("--over_length", default="truncate", choices=server.OVER_LENGTH,
                   help="an embedding input longer than the model's max_doc_tokens / max_query_tokens: "
                        "cut it (as in training) or refuse the request (400)")
    p.add_argument("--prompt_bucket", type=int, default=64, help="completion prompt widths round up to this")
    p.add_argument("--max_tokens", type=int, default=128, help="a completion's max_tokens when it gives none")
    p.add_argument("--log_level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        p.error(f"--port must be in [0, 65535], got {args.port}")
    for key in ("max_batch_size", "max_inputs", "prompt_bucket", "max_tokens"):
        if getattr(args, key) < 1:
            p.error(f"--{key} must be >= 1, got {getattr(args, key)}")
    if not args.batch_window_ms >= 0:
        p.error(f"--batch_window_ms must be >= 0, got {args.batch_window_ms}")
    return args


def settings_from(args: argparse.Namespace) -> server.ServerSettings:
    return server.ServerSettings(
        model_name=args.served_model_name or args.model, max_batch_size=args.max_batch_size,
        batch_window_ms=args.batch_window_ms, max_inputs=args.max_inputs, over_length=args.over_length,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None, prompt_bucket=args.prompt_bucket,
        default_max_tokens=args.max_tokens)


def serve(args: argparse.Namespace) -> None:
    settings = settings_from(args)
    sock = server.bind_socket(args.host, args.port)  # a port in use fails now, not after loading the model
    try:
        embedder = O1Embedder.from_pretrained(args.model, dtype=args.dtype, batch_size=args.max_batch_size)
        app = server.create_app(embedder, settings)
        host, port = sock.getsockname()[:2]
        print(f"serving {settings.model_name} on http://{host}:{port}/v1 "
              f"({'API key required' if settings.api_key else 'no API key'})", flush=True)
        server.uvicorn_server(app, args.log_level).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on: a stop asked for, not a failure
        print("stopped", flush=True)
    finally:
        sock.close()


def main(argv=None) -> int:
    return cli.run(serve, parse(argv))


if __name__ == "__main__":
    sys.exit(main())

"""``python -m maskflow.serving URL IMAGE [IMAGE ...]``: the client of a running server
(``maskflow.serving.rest`` or ``mlflow models serve``)."""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from maskflow.serving.pyfunc import encode_images


def main(argv: list[str] | None = None) -> int:
    """``python -m maskflow.serving URL IMAGE [IMAGE ...] [--faces-only]``: send images to
    a running server, print one JSON line per image (HTTP errors to stderr, exit 1; a busy
    server's 503 is retried after its Retry-After)."""

    parser = argparse.ArgumentParser(prog="python -m maskflow.serving", description=main.__doc__.splitlines()[0])
    parser.add_argument("url", help="server root, e.g. http://127.0.0.1:5001")
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--faces-only", action="store_true")
    parser.add_argument("--min-score", type=float, default=None,
                        help="report faces whose score x detector_score is at least this (default: the model's operating point)")
    parser.add_argument("--all", dest="all_faces", action="store_true", help="report every candidate face (the ranked list)")
    parser.add_argument("--retries", type=int, default=5, help="times to retry a 503 (server busy) after its Retry-After")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:  # nothing is sent: a request is all or nothing
        print(f"maskflow.serving: not a readable file: {', '.join(missing)}", file=sys.stderr)
        return 1
    body = {"dataframe_split": encode_images(args.images, sources=True).to_dict(orient="split"),
            "params": {"faces_only": args.faces_only, "all": args.all_faces,
                       **({} if args.min_score is None else {"min_score": args.min_score})}}
    body["dataframe_split"].pop("index", None)
    data = json.dumps(body).encode()
    for attempt in range(args.retries + 1):
        request = urllib.request.Request(args.url.rstrip("/") + "/invocations", data=data,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                for record in json.loads(response.read())["predictions"]:
                    print(json.dumps(record))
            return 0
        except urllib.error.HTTPError as exc:
            message = exc.read().decode(errors="replace")
            if exc.code == 503 and attempt < args.retries:  # busy: wait as the server asks
                wait = float(exc.headers.get("Retry-After") or 1)
                print(f"HTTP 503, retrying in {wait:g} s: {message}", file=sys.stderr)
                time.sleep(wait)
                continue
            print(f"HTTP {exc.code}: {message}", file=sys.stderr)
            return 1
        except (urllib.error.URLError, OSError) as exc:  # no server there, or the connection broke
            print(f"maskflow.serving: {args.url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
            return 1
    return 1


if __name__ == "__main__":
    raise SystemExit(main())

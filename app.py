"""medchat in the browser: chat, compare base and fine-tuned answers, browse runs, review.

    python app.py [--profile auto|smollm2-135m|mistral-7b|mistral-7b-bf16]
                  [--adapter PATH_OR_ID|none] [--host HOST] [--port PORT] [--share]
                  [--backend local|openai] [--server-url http://HOST:PORT/v1]

Every flag may also come from its MEDCHAT_* variable (see medchat.settings); a flag wins. On a
Hugging Face Space (SPACE_ID is set) the app listens on 0.0.0.0 unless a host is given. This
file is also the Space's entry point. Sign-in (medchat.access): MEDCHAT_AUTH puts the app
behind a login page; on a Space with `hf_oauth: true`, voting and rating need a Hugging Face
sign-in while chat stays open.
"""

from __future__ import annotations

import argparse
import os
import sys

from medchat import gpu  # first: on ZeroGPU, `spaces` must be imported before torch
from medchat.backends import add_backend_flags, backend_overrides
from medchat.errors import MedchatError
from medchat.profiles import PROFILE_NAMES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=PROFILE_NAMES, help="base model profile (auto)")
    parser.add_argument(
        "--adapter", metavar="PATH_OR_ID", help="LoRA adapter folder or hub id; 'none' for base"
    )
    parser.add_argument("--host", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (7860)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    add_backend_flags(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    gpu.prepare()
    from medchat.access import Access
    from medchat.backends import make_backend
    from medchat.logs import quiet_start_up
    from medchat.pipeline import Pipeline, warm_up_triage
    from medchat.references import check_eval_data
    from medchat.reviews import ReviewStore
    from medchat.settings import Settings
    from medchat.ui import build_app, launch_style

    host = args.host
    if host is None and os.environ.get("SPACE_ID") and not os.environ.get("MEDCHAT_HOST"):
        host = "0.0.0.0"  # a Space routes traffic to the container, not to its loopback
    try:
        settings = Settings.from_env(
            profile=args.profile,
            adapter=args.adapter,
            host=host,
            port=args.port,
            **backend_overrides(args),
        )
        # Before the model loads: peft imports bitsandbytes, whose kernel probe is noise here.
        quiet_start_up(settings.profile)
        # The cheap checks first, so a bad data file or data dir fails before the model loads.
        check_eval_data(settings)
        access = Access.from_settings(settings)
        store = ReviewStore(settings.reviews_db)
        pipeline = Pipeline(make_backend(settings), settings)
        # After the backend, not beside it: two threads importing transformers at once can
        # see it half-imported. It then loads while the page is built and opened.
        # The NIH sources' index next (seconds; the MedQuAD vectors ship in assets/index/).
        pipeline.warm_up_retrieval(after=warm_up_triage())
    except MedchatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    demo = build_app(pipeline, settings, store=store, access=access)
    demo.queue(default_concurrency_limit=settings.queue_concurrency).launch(
        server_name=settings.host,
        server_port=settings.port,
        share=args.share,
        auth=access.gradio_auth(),
        auth_message="medchat: sign in to chat, vote and rate answers.",
        **launch_style(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Serve forget requests with an append-only journal (the same command as the installed
``recbole-unrank-stream``; ``--help`` lists every option and ``unrank_*`` key).

    python run_unrank_stream.py --checkpoint saved/WMF.pth --journal journal/ --requests inbox/
    python run_unrank_stream.py --checkpoint saved/WMF.pth --journal journal/ --requests requests.jsonl
    tail -f requests.jsonl | python run_unrank_stream.py --checkpoint saved/WMF.pth --journal journal/ --requests -
"""

import recbole_unrank  # noqa: F401  (compat patches before RecBole)
from recbole_unrank.cli import main_stream as main

if __name__ == "__main__":
    main()

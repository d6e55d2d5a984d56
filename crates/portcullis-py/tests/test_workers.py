"""Two uvicorn worker processes of the FastAPI app on one Redis: a limit
of N admits exactly N across them."""

from __future__ import annotations

import httpx

from conftest import LIMITED_LIMIT, make_setup, need_redis, start_app


def test_a_limit_of_n_admits_exactly_n_across_two_workers(tmp_path):
    need_redis()
    setup = make_setup(tmp_path, redis=True)
    server = start_app("fastapi", setup, workers=2)
    try:
        statuses, pids = [], set()
        # The start-up probe was one /public request: /limited is untouched.
        for _ in range(LIMITED_LIMIT * 8):
            # A new connection each time, so both workers take requests.
            r = httpx.get(server.base + "/limited/x", headers={"Connection": "close"})
            statuses.append(r.status_code)
            if r.status_code == 200:
                pids.add(r.json()["pid"])
        assert statuses.count(200) == LIMITED_LIMIT, statuses
        assert statuses.count(429) == len(statuses) - LIMITED_LIMIT
        # Keep asking until both workers answered (the limit is per IP, so
        # /public shows the pids).
        for _ in range(200):
            if len(pids) >= 2:
                break
            pids.add(httpx.get(server.base + "/public/hello", headers={"Connection": "close"}).json()["pid"])
        assert len(pids) == 2, pids
    finally:
        server.stop()
        setup.close()

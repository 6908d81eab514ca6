"""Runs the real argilla-server 2.8.0 app (in .venv-argilla) against osmem-server instead of OpenSearch.

Everything is argilla-server's own code (FastAPI app, SQLite database, Redis, its OpenSearch search engine
talking HTTP to the search back end), except one thing: Elasticsearch/OpenSearch cannot be installed here,
so the search back end is osmem-server, an in-memory OpenSearch emulator from PyPI. osmem does not run
painless scripts, so the three scripted partial updates argilla issues (add/remove a response, remove a
suggestion) are done here as read-modify-write of the record document. That subclass is the stand-in.

Usage (inside .venv-argilla): python scripts/argilla/app.py --host 127.0.0.1 --port 6900
Configuration comes from argilla-server's own ARGILLA_* environment variables.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import uvicorn
from argilla_server.constants import SEARCH_ENGINE_OPENSEARCH
from argilla_server.models import Response, Suggestion
from argilla_server.search_engine.base import SearchEngine
from argilla_server.search_engine.commons import es_index_name_for_dataset
from argilla_server.search_engine.opensearch import OpenSearchEngine


@SearchEngine.register(engine_name=SEARCH_ENGINE_OPENSEARCH)
class OsmemOpenSearchEngine(OpenSearchEngine):
    """argilla's OpenSearch engine with its painless-script updates replaced by read-modify-write."""

    async def _rewrite(self, index: str, doc_id: str, change: Callable[[dict[str, Any]], None]) -> None:
        found = await self.client.get(index=index, id=doc_id)
        source = found["_source"]
        change(source)
        await self.client.index(index=index, id=doc_id, body=source, refresh=True)

    async def update_record_response(self, response: Response) -> None:
        record = response.record
        mapped = self._map_record_response_to_es(response)

        def change(source: dict[str, Any]) -> None:
            kept = [r for r in source.get("responses") or [] if str(r.get("id")) != str(mapped["id"])]
            source["responses"] = [*kept, mapped]

        await self._rewrite(es_index_name_for_dataset(record.dataset), str(record.id), change)

    async def delete_record_response(self, response: Response) -> None:
        record = response.record
        response_id = str(response.id)

        def change(source: dict[str, Any]) -> None:
            source["responses"] = [r for r in source.get("responses") or [] if str(r.get("id")) != response_id]

        await self._rewrite(es_index_name_for_dataset(record.dataset), str(record.id), change)

    async def delete_record_suggestion(self, suggestion: Suggestion) -> None:
        name = suggestion.question.name

        def change(source: dict[str, Any]) -> None:
            (source.get("suggestions") or {}).pop(name, None)

        await self._rewrite(es_index_name_for_dataset(suggestion.record.dataset), str(suggestion.record_id), change)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6900)
    args = parser.parse_args()
    from argilla_server import app

    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()

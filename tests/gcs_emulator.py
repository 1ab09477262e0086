"""Runs gcp-storage-emulator with the generation headers GCS sends on every object read.

    python tests/gcs_emulator.py start --host=127.0.0.1 --port=PORT --default-bucket=B ...

The emulator answers a media read (`alt=media`, the download endpoint) without the
`x-goog-generation` / `x-goog-metageneration` headers that real GCS always sends. tensorstore
reads an object's generation from them (it writes conditionally on it), so without them its
second look at an existing object fails with "Malformed StorageGeneration". This adds the two
headers to the emulator's own download handler and starts it unchanged otherwise.
"""

import sys

from gcp_storage_emulator import server
from gcp_storage_emulator.__main__ import main
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["x-goog-generation"] = obj["generation"]
        response["x-goog-metageneration"] = obj["metageneration"]
    except Exception:  # noqa: BLE001 - a missing object: the handler answers 404 itself
        pass
    return _download(request, response, storage, *args, **kwargs)


objects.download = download  # objects.get calls it by name for alt=media
server.HANDLERS = tuple(
    (pattern, {method: download if f is _download else f for method, f in table.items()})
    for pattern, table in server.HANDLERS
)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Celery's embedded broker (`filesystem://`, what `make run` uses), made safe to read while written.

kombu's filesystem channel creates a message file, then writes it; a reader polling the folder in
between moves and reads an empty file, and the worker dies on the JSON error ("Unrecoverable error:
JSONDecodeError", celery/kombu#1551, seen here twice in one afternoon of deploys). Here a message is
written under a name the reader ignores and renamed into place once complete: a rename within one
folder is atomic, so a reader sees a whole message or none.
"""
from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = f"{final}.partial"  # not "<queue>.msg": the reader's filter skips it
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel

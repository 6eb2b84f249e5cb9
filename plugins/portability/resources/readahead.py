"""Reading ahead on a thread: the source of the next items works while the caller handles this one."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress


@contextmanager
def read_ahead(items: Iterable, depth: int = 3) -> Iterator[Iterator]:
    """`items` read on a thread, at most `depth` ahead of the caller; the reader's error is raised to the caller.

    PostgreSQL produces the next batches, or object storage sends the next chunk, while this one
    is exported or hashed (both release the GIL).
    """
    waiting: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def read() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        waiting.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            waiting.put((end, None))
        except BaseException as exc:  # handed to the consumer, which raises it
            waiting.put((end, exc))

    def consume() -> Iterator:
        while True:
            item = waiting.get()
            if isinstance(item, tuple) and item and item[0] is end:
                if item[1] is not None:
                    raise item[1]
                return
            yield item

    reader = threading.Thread(target=read, name="read-ahead", daemon=True)
    reader.start()
    try:
        yield consume()
    finally:
        # The source must not be read after its owner closes it: stop the thread and wait for it.
        stop.set()
        while reader.is_alive():
            with suppress(queue.Empty):
                waiting.get(timeout=0.2)
        reader.join()

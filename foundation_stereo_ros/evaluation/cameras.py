"""Recordings of several stereo cameras: each camera paired on its own, the cameras batched together.

A robot with several stereo pairs records each under its own namespace (``/front/left/image_rect``,
``/rear/left/image_rect`` ...), as the node's ``cameras`` parameter subscribes to them.
:class:`CameraBagReader` pairs every camera's topics with its own synchroniser (the node has one
per camera) and merges the cameras' pairs in the order they were completed in the bag;
:func:`camera_batches` groups them as the node's worker takes them: at most one pair per camera in
a batch, which is processed in one :meth:`~foundation_stereo_ros.pipeline.StereoProcessor.process_messages_batch`
call (one network call per image size).
"""
from __future__ import annotations

import heapq
import itertools
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from foundation_stereo_ros.evaluation.bag_io import StereoBagReader, bag_folder, topic_types
from foundation_stereo_ros.evaluation.bag_pairing import StereoRecord, StereoTopics, detect_cameras

CameraRecord = Tuple[str, StereoRecord]  # (camera name, one of its pairs)


def camera_batches(pairs: Iterable[CameraRecord]) -> Iterator[List[CameraRecord]]:
    """Pairs in the order they were completed, grouped as the node's worker takes the newest pair of
    each camera: a batch holds at most one pair per camera and closes when a camera already in it
    completes another pair (cameras stamped together give one batch per stamp; a camera that stalls
    or runs slower is simply absent from some batches)."""
    batch: List[CameraRecord] = []
    for name, record in pairs:
        if any(n == name for n, _ in batch):
            yield batch
            batch = []
        batch.append((name, record))
    if batch:
        yield batch


class CameraBagReader:
    """The stereo cameras of one bag (``cameras``: their namespaces, default: detected), each with a
    :class:`StereoBagReader` of its own topics and the node's ``sync`` parameters."""

    def __init__(self, path: Any, cameras: Optional[Sequence[str]] = None,
                 sync: Optional[Mapping[str, Any]] = None):
        self.path = bag_folder(path)
        self.topics: Dict[str, StereoTopics] = detect_cameras(topic_types(self.path), cameras)
        self.readers: Dict[str, StereoBagReader] = {}
        try:
            for name, topics in self.topics.items():
                self.readers[name] = StereoBagReader(self.path, topics=topics, sync=dict(sync or {}))
        except BaseException:
            self.close()
            raise

    @property
    def names(self) -> List[str]:
        return list(self.topics)

    @property
    def sync(self) -> Dict[str, Any]:
        return next(iter(self.readers.values())).sync

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()

    def __enter__(self) -> "CameraBagReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def expected_pairs(self, max_frames: int = 0) -> Dict[str, int]:
        """Per camera, the pairs its message counts allow (for progress bars)."""
        out = {}
        for name, reader in self.readers.items():
            counts = reader.topic_counts
            n = min(counts.get(t, 0) for t in reader.topics.stereo())
            out[name] = min(n, max_frames) if max_frames else n
        return out

    def pairs(self, max_frames: int = 0) -> Iterator[CameraRecord]:
        """Every camera's pairs (the first ``max_frames`` of each, 0: all), merged in the order of the
        bag time at which each was completed (cameras in the order of :attr:`names` at equal times)."""
        order = {name: i for i, name in enumerate(self.names)}

        def tagged(name: str, reader: StereoBagReader) -> Iterator[CameraRecord]:
            for record in itertools.islice(reader.pairs(), max_frames or None):
                yield name, record

        streams = [tagged(name, reader) for name, reader in self.readers.items()]
        return heapq.merge(*streams, key=lambda item: (item[1].log_time_ns, order[item[0]]))

    def batches(self, max_frames: int = 0) -> Iterator[List[CameraRecord]]:
        """:func:`camera_batches` of :meth:`pairs`."""
        return camera_batches(self.pairs(max_frames))

    def unpaired(self) -> Dict[str, Dict[str, int]]:
        """Per camera, its messages in no pair (after :meth:`pairs` has run)."""
        return {name: reader.unpaired for name, reader in self.readers.items()}

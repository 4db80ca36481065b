"""DatasetIndex: what a scan found, the type that crosses from data/ to train/ and infer/.

Owns the index's fields (root, class names, accepted samples with their content digests,
rejected and ignored files with a reason each, duplicate groups, label conflicts, the label
source and its problems) and its fingerprint, which keys caches and pins a run's data.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Sample:
    path: str  # relative to the index root, '/'-separated
    label: int
    size: int  # bytes
    mtime_ns: int
    width: int
    height: int
    digest: str = ""  # BLAKE2b-128 of the file's bytes (hex): duplicates, pinned splits


@dataclass(frozen=True)
class FileNote:
    path: str  # relative to the index root
    reason: str


@dataclass
class DatasetIndex:
    root: str  # absolute
    class_names: list[str]
    samples: list[Sample]
    rejected: list[FileNote] = field(default_factory=list)
    ignored: list[FileNote] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)  # byte-identical groups
    label_conflicts: list[list[str]] = field(default_factory=list)  # groups across classes
    fingerprint: str = ""  # of the accepted files: paths, labels, sizes, mtimes, contents
    stats: dict = field(default_factory=dict)  # this scan only: decoded, from_cache, seconds
    label_source: str = "folders"  # where the labels came from (ScanOptions.labels)
    label_problems: dict = field(default_factory=dict)  # kind -> every example (labels.py)

    def abspath(self, sample: Sample) -> str:
        return os.path.join(self.root, sample.path)

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def per_class(self) -> dict[str, int]:
        counts = Counter(s.label for s in self.samples)
        return {name: counts.get(i, 0) for i, name in enumerate(self.class_names)}

    def subset(self, positions: list[int]) -> "DatasetIndex":
        """The same index restricted to samples at `positions` (in that order)."""
        samples = [self.samples[i] for i in positions]
        return DatasetIndex(self.root, list(self.class_names), samples,
                            fingerprint=compute_fingerprint(self.class_names, samples))

    def to_dict(self) -> dict:
        return {
            "root": self.root,
            "classes": self.class_names,
            "per_class": self.per_class(),
            "images": len(self.samples),
            "rejected": [asdict(n) for n in self.rejected],
            "ignored": [asdict(n) for n in self.ignored],
            "duplicates": self.duplicates,
            "label_conflicts": self.label_conflicts,
            "fingerprint": self.fingerprint,
            "stats": self.stats,
            "label_source": self.label_source,
            "label_problems": self.label_problems,
            "samples": [asdict(s) for s in self.samples],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetIndex":
        return cls(
            root=d["root"],
            class_names=list(d["classes"]),
            samples=[Sample(**s) for s in d["samples"]],
            rejected=[FileNote(**n) for n in d.get("rejected", [])],
            ignored=[FileNote(**n) for n in d.get("ignored", [])],
            duplicates=d.get("duplicates", []),
            label_conflicts=d.get("label_conflicts", []),
            fingerprint=d.get("fingerprint", ""),
            label_source=d.get("label_source", "folders"),
            label_problems=d.get("label_problems", {}),
        )


def compute_fingerprint(class_names: list[str], samples: list[Sample]) -> str:
    h = hashlib.sha256(json.dumps(class_names).encode())
    for s in samples:
        # The content digest too: a file rewritten with the same size and mtime is new data.
        h.update(os.fsencode(s.path) + b"\0" + f"{s.label}:{s.size}:{s.mtime_ns}:{s.digest}\n".encode())
    return h.hexdigest()[:32]

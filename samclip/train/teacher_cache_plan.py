"""What ``samclip-data cache-teacher NAME`` caches, read from the train config.

NAME is a teacher of the composed train config (``teacher.<NAME>``). The distillation term that reads it
decides the rest: the kind of the term's stream is what the teacher reads (``images``: D_CLIP crop views,
``prompted_images``: D_SAM frames), the term's kind the outputs stored (``DistillTerm.teacher_outputs``:
``embedding``, or a dense teacher's ``summary`` and ``patches``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from samclip.train.tasks.distill import DEFAULT_STREAM_KINDS, build_term
from samclip.train.tasks.terms import TERM_KINDS, DistillTerm


@dataclass(frozen=True)
class TeacherCachePlan:
    name: str  # teacher.<name>
    stream: str  # data.<stream>, the stream its term reads
    stream_kind: str
    term_kind: type[DistillTerm]
    terms: tuple[str, ...]  # the config keys of the terms reading it

    def encoder(self, teacher: torch.nn.Module) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
        """The teacher's named outputs of a batch of its inputs, as the term computes them online."""
        return lambda images: self.term_kind.teacher_outputs(teacher, images)


def plan_teacher_cache(cfg: DictConfig, name: str) -> TeacherCachePlan:
    """The plan for caching ``teacher.<name>``; a ValueError naming the key when the config cannot say."""
    teachers = list(cfg.get("teacher") or {})
    if name not in teachers:
        raise ValueError(f"unknown teacher {name!r}; the config's teachers are {teachers} (teacher.<name>)")
    readers = []
    for task_name, task in (cfg.get("tasks") or {}).items():
        terms = task.get("terms")
        if terms is None:
            continue
        kinds = {**DEFAULT_STREAM_KINDS, **OmegaConf.to_container(task.get("streams") or {}, resolve=True)}
        for term_name in terms:
            raw = OmegaConf.to_container(terms[term_name], resolve=False)
            if raw.get("teacher") != f"${{teacher.{name}}}":
                continue
            values = OmegaConf.to_container(terms[term_name], resolve=True)
            values.update(teacher=None, loss=None)
            term = build_term(term_name, values)
            key = f"tasks.{task_name}.terms.{term_name}"
            if term.stream not in kinds:
                raise ValueError(
                    f"{key}.stream: {term.stream!r} has no stream kind (tasks.{task_name}.streams)"
                )
            readers.append((key, term.stream, kinds[term.stream], TERM_KINDS.get(term.kind)))
    if not readers:
        raise ValueError(
            f"teacher.{name} is read by no distillation term (a tasks.<task>.terms.<term>.teacher "
            f"of ${{teacher.{name}}}), so nothing says which stream it reads and which outputs to store"
        )
    ways = {(stream, kind, term_kind) for _, stream, kind, term_kind in readers}
    if len(ways) > 1:
        raise ValueError(
            f"teacher.{name} is read by terms of different streams or kinds "
            f"({', '.join(f'{key}: {stream} stream, {t.kind}' for key, stream, _, t in readers)}): one cache cannot serve both"
        )
    ((stream, stream_kind, term_kind),) = ways
    if not term_kind.cache_outputs:
        raise ValueError(
            f"teacher.{name} is read by a {term_kind.kind} term ({readers[0][0]}), whose teacher "
            "outputs cannot be cached"
        )
    return TeacherCachePlan(name, stream, stream_kind, term_kind, tuple(key for key, *_ in readers))

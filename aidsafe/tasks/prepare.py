"""`aidsafe prepare`: a prompt pool cleaned before generation. Rows from several sources are
tagged with their source, exact and near duplicates are dropped, and so are prompts found in
the eval sets given; every dropped prompt is listed in report.json (and report.html) with why
and what it matched."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import html
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from aidsafe.config import RunConfig
from aidsafe.errors import UserError
from aidsafe.inputs import PromptSource, category_names
from aidsafe.jsonl import now, write_atomic, write_jsonl
from aidsafe.run.directory import RunDirectory
from aidsafe.run.driver import progress_display
from aidsafe.run.select import balanced_subset
from aidsafe.tasks.pool_roles import ClassifyPrompts, ContrastPrompts

PROMPTS = "prompts.jsonl"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"

# MinHash signatures only find candidates in the LSH index (the exact Jaccard decides); 128
# permutations is datasketch's default, and the seed is fixed so a pool always finds the same.
NUM_PERM = 128
MINHASH_SEED = 1
STEP = 1024  # a pass's progress line moves this many rows at a time


@contextmanager
def pass_progress(
    show: bool, description: str, total: int | None
) -> Iterator[Callable[[int], None]]:
    """A progress line (on stderr) for one pass over the pool; yields what advances it by a
    number of rows. A pass whose length is not known beforehand is shown complete at its end."""
    display = progress_display(Console(stderr=True), show)
    if display is None:
        yield lambda rows: None
        return
    with display:
        task = display.add_task(description, total=total, status="")
        yield lambda rows: display.advance(task, rows)
        display.update(task, total=display.tasks[0].completed)


@dataclass(frozen=True)
class InputSpec:
    """One pool input: a file, saved dataset folder or Hugging Face dataset (`spec`), and the
    name its rows are tagged with (`source`)."""

    spec: str
    source: str

    @classmethod
    def parse(cls, text: str) -> InputSpec:
        """`SPEC`, tagged with its file name (a dataset by its name), or `NAME=SPEC`. Text that
        names an existing path is a path even if it holds `=`."""
        name, sep, spec = text.partition("=")
        if sep and name and spec and not Path(text).exists() and "/" not in name:
            return cls(spec, name)
        path = Path(text)
        return cls(text, path.name if path.exists() else text)


@dataclass(frozen=True)
class EvalSpec:
    """An eval set the pool is checked against: a file, saved dataset folder or Hugging Face
    dataset (`spec`, also the name it is reported by) and the field holding its prompts."""

    spec: str
    field: str

    @classmethod
    def parse(cls, text: str) -> EvalSpec:
        """`SPEC:FIELD`, or `SPEC` alone for the field `prompt`. Text that names an existing
        path is a path even if it holds `:`."""
        spec, sep, name = text.rpartition(":")
        if not sep or not spec or not name or "/" in name or Path(text).exists():
            spec, name = text, "prompt"
        return cls(spec, name)


@dataclass(frozen=True)
class PrepareSettings:
    """How the pool is read and cleaned. Thresholds are similarities in (0, 1]."""

    near_threshold: float = 0.7  # near duplicates: Jaccard of word 1..shingle-grams
    shingle: int = 2  # longest word n-gram in a prompt's shingle set
    prompt_field: str = "prompt"
    id_field: str = "id"
    split: str = "train"
    against: tuple[EvalSpec, ...] = ()  # eval sets the pool must not contain
    against_split: str = "test"  # the split of an eval set given as a dataset
    ngram: int = 13  # a shared word n-gram of this length is contamination
    against_threshold: float = 0.7  # MinHash detector: Jaccard with an eval item
    tfidf: bool = False  # also the TF-IDF cosine detector (needs scikit-learn)
    tfidf_threshold: float = 0.7  # STAR-1's threshold
    # embeddings, from an OpenAI-compatible /v1/embeddings endpoint and its model, or from a
    # local sentence-transformers model: the decontamination detector, and optionally dedup
    embeddings_url: str | None = None
    embeddings_model: str = "text-embedding-3-small"
    embeddings_key_env: str = "OPENAI_API_KEY"
    embeddings_local: str | None = None  # a sentence-transformers model folder or name
    embedding_threshold: float = 0.8  # decontamination cosine: STAR-1's threshold
    embedding_dedup: bool = False  # also drop pool prompts this close to a kept one
    embedding_dedup_threshold: float = 0.9
    # columns naming each prompt's categories: FIELD for every input, SOURCE=FIELD for one
    category_field: tuple[str, ...] = ()
    select: int | None = None  # keep this many, balanced over source x category
    seed: int | None = None  # which prompts of a bucket the selection keeps
    config: RunConfig | None = None  # the model roles' config (classifier, contrast)
    classify: bool = False  # tag prompts with the policies they touch
    contrast: int | None = None  # benign look-alikes per policy-touching prompt
    show_progress: bool = False  # the model roles' progress lines

    def category_fields(self, sources: list[str]) -> dict[str, str]:
        """The category column of each source that has one (`--category-field`)."""
        every = [spec for spec in self.category_field if "=" not in spec]
        if len(every) > 1:
            raise UserError(
                f"--category-field {every[1]}: a field for every input is given twice "
                "(name one input's with SOURCE=FIELD)"
            )
        fields = dict.fromkeys(sources, every[0]) if every else {}
        named: set[str] = set()
        for spec in self.category_field:
            name, sep, column = spec.partition("=")
            if not sep:
                continue
            if name not in sources or not column:
                raise UserError(
                    f"--category-field {spec}: expected SOURCE=FIELD with SOURCE one of "
                    f"{', '.join(sources)}"
                )
            if name in named:
                raise UserError(f"--category-field {spec}: {name} is given a field twice")
            named.add(name)
            fields[name] = column
        return fields

    @property
    def embeddings(self) -> bool:
        return bool(self.embeddings_url or self.embeddings_local)

    def check(self) -> None:
        thresholds = {
            "--near-threshold": self.near_threshold,
            "--against-threshold": self.against_threshold,
            "--tfidf-threshold": self.tfidf_threshold,
            "--embedding-threshold": self.embedding_threshold,
            "--embedding-dedup-threshold": self.embedding_dedup_threshold,
        }
        for option, value in thresholds.items():
            if not 0 < value <= 1:
                raise UserError(f"{option}: expected a number in (0, 1], got {value}")
        for option, words in {"--shingle": self.shingle, "--ngram": self.ngram}.items():
            if words < 1:
                raise UserError(f"{option}: expected a whole number of words >= 1, got {words}")
        if self.embeddings_url and self.embeddings_local:
            raise UserError("--embeddings-url and --embeddings-local: give one of them, not both")
        if self.embedding_dedup and not self.embeddings:
            raise UserError("--embedding-dedup needs --embeddings-url or --embeddings-local")
        if self.contrast is not None and self.contrast < 1:
            raise UserError(f"--contrast: expected a number of prompts >= 1, got {self.contrast}")
        if self.contrast is not None and not (self.classify or self.category_field):
            raise UserError(
                "--contrast needs --classify or --category-field: they say which prompts touch "
                "a policy"
            )
        if (self.classify or self.contrast) and self.config is None:
            raise UserError("--classify and --contrast need a model configuration")
        if self.select is not None and self.select < 1:
            raise UserError(f"--select: expected a number of prompts >= 1, got {self.select}")
        given = Counter(self.against)
        repeated = [spec for spec, count in given.items() if count > 1]
        if repeated:
            raise UserError(
                f"--against {repeated[0].spec}:{repeated[0].field}: this eval set is given twice"
            )


@dataclass
class PoolRow:
    """A prompt of the pool; `position` orders the pool (inputs in the order given, then rows
    in source order) and decides which copy of a duplicate is kept: the first."""

    position: int
    source: str
    row: int  # 0-based index in its source
    id: str  # the source's id, or a content hash of the prompt
    prompt: str
    categories: list[str] = field(default_factory=list)  # from the category field, if any
    policies: list[str] | None = None  # the classifier's tags (None: not tagged)
    contrast_of: str | None = None  # --contrast: the output id of the prompt it looks like


@dataclass
class PrepareSummary:
    out: Path
    read: int
    kept: int
    dropped: dict[str, int]  # reason -> count
    per_source: dict[str, dict[str, int]] = field(default_factory=dict)  # read/kept per source
    evals: list[dict[str, Any]] = field(default_factory=list)  # per eval set: items, matched
    buckets: dict[str, dict[str, int]] = field(default_factory=dict)  # --select: before/after
    classified: dict[str, Any] | None = None  # --classify: prompts per policy tag, failures
    contrast: dict[str, Any] | None = None  # --contrast: look-alikes written, kept, failures


# --- text ----------------------------------------------------------------------------------------

_NON_WORD = re.compile(r"[\W_]+")


def normalise(text: str) -> str:
    """The text compared for duplicates: Unicode-compatibility folded, case-folded, with
    punctuation and runs of white space turned into single spaces."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _NON_WORD.sub(" ", folded).strip()


def text_hash(text: str) -> str:
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()


def shingles(text: str, longest: int) -> set[str]:
    """Word 1- to `longest`-grams of the normalised text: single words make a reordered or
    re-punctuated prompt match, the longer grams keep apart prompts made of the same words."""
    words = normalise(text).split()
    grams = {
        " ".join(words[start : start + size])
        for size in range(1, longest + 1)
        for start in range(len(words) - size + 1)
    }
    return grams or {""}


@functools.cache
def _template() -> Any:
    """A MinHash whose permutations every signature shares: drawing them anew for each prompt
    costs three quarters of the time of a signature."""
    from datasketch import MinHash

    return MinHash(num_perm=NUM_PERM, seed=MINHASH_SEED)


def minhash_of(grams: set[str]) -> Any:
    from datasketch import MinHash

    template = _template()
    signature = MinHash(
        num_perm=NUM_PERM,
        seed=MINHASH_SEED,
        permutations=template.permutations,
        scheme=template.scheme,
    )
    signature.update_batch([gram.encode("utf-8") for gram in grams])
    return signature


# --- the pool ------------------------------------------------------------------------------------


def open_sources(
    inputs: list[InputSpec], settings: PrepareSettings
) -> tuple[list[PromptSource], dict[str, str]]:
    """Every input opened and read through once, so that a missing file, field or bad line
    stops the command before any output is written; and each source's category column."""
    if not inputs:
        raise UserError("prepare needs at least one input")
    names = Counter(spec.source for spec in inputs)
    repeated = [name for name, count in names.items() if count > 1]
    if repeated:
        raise UserError(
            f"{repeated[0]}: two inputs have this source name; name them with NAME=INPUT"
        )
    fields = settings.category_fields([spec.source for spec in inputs])
    sources = []
    for spec in inputs:
        column = fields.get(spec.source)
        source = PromptSource(
            spec.spec,
            prompt_field=settings.prompt_field,
            id_field=settings.id_field,
            split=settings.split,
            extra_fields=(column,) if column else (),
            extra_option="--category-field",
        )
        source.check()
        sources.append(source)
    return sources, fields


class NearIndex:
    """MinHash signatures in an LSH index, which finds candidates fast and approximately; each
    candidate is then confirmed by the exact Jaccard similarity of the two shingle sets, so a
    reported score is exact and every match reaches the threshold. The index keeps only its
    band hashes and each key's text, nothing that grows with the square of the pool."""

    # LSH bands are tuned to the threshold by weighing a missed pair 9 times a false candidate:
    # the confirmation step removes false candidates, nothing brings a missed pair back.
    WEIGHTS = (0.1, 0.9)

    def __init__(self, threshold: float, longest: int) -> None:
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.longest = longest
        # bands tuned above 0.9 are too few for datasketch (none at 1.0), and the exact check
        # applies the real threshold to what 0.9's bands find
        banding = min(threshold, 0.9)
        self.lsh = MinHashLSH(threshold=banding, num_perm=NUM_PERM, weights=self.WEIGHTS)
        self.texts: dict[int, str] = {}

    def match(self, text: str) -> tuple[int | None, float, Any]:
        """The most similar indexed key at or above the threshold (ties: the smallest key; None
        if there is none) and its Jaccard similarity, with the text's signature (to `add` the
        text without computing it again)."""
        grams = shingles(text, self.longest)
        signature = minhash_of(grams)
        best: tuple[int, float] | None = None
        for key in sorted(self.lsh.query(signature)):
            other = shingles(self.texts[key], self.longest)
            score = len(grams & other) / len(grams | other)
            if score >= self.threshold and (best is None or score > best[1]):
                best = (key, score)
        if best is None:
            return None, 0.0, signature
        return best[0], best[1], signature

    def add(self, key: int, text: str, signature: Any) -> None:
        self.lsh.insert(key, signature)
        self.texts[key] = text


def _pool(
    inputs: list[InputSpec],
    sources: list[PromptSource],
    dropped: list[dict[str, Any]],
    fields: dict[str, str],
) -> Iterator[PoolRow]:
    """The usable rows of every source in order; an unusable one goes to `dropped`."""
    position = 0
    for spec, source in zip(inputs, sources, strict=True):
        for row in source:
            if row.prompt is None:
                dropped.append(
                    {
                        "source": spec.source,
                        "row": row.index,
                        "id": row.id,
                        "prompt": None,
                        "reason": "unusable",
                        "detail": f"{spec.spec}: {row.problem}",
                    }
                )
                continue
            column = fields.get(spec.source)
            named = category_names(row.fields.get(column)) if column else []
            yield PoolRow(position, spec.source, row.index, row.id, row.prompt, named)
            position += 1


def _drop(row: PoolRow, reason: str, detector: str, score: float, kept: PoolRow) -> dict[str, Any]:
    return {
        "source": row.source,
        "row": row.row,
        "id": row.id,
        "prompt": row.prompt,
        "reason": reason,
        "detector": detector,
        "score": round(score, 4),
        "duplicate_of": {"source": kept.source, "row": kept.row, "id": kept.id},
    }


def deduplicate(
    rows: Iterable[PoolRow],
    settings: PrepareSettings,
    dropped: list[dict[str, Any]],
    step: Callable[[int], None],
) -> list[PoolRow]:
    """The rows left after exact dedup (same normalised text) and near-duplicate dedup (MinHash
    LSH candidates, exact Jaccard); the first copy in pool order is kept, each other copy goes
    to `dropped`."""
    kept: list[PoolRow] = []
    by_hash: dict[str, PoolRow] = {}
    near = NearIndex(settings.near_threshold, settings.shingle)
    by_position: dict[int, PoolRow] = {}
    seen = 0
    for seen, row in enumerate(rows, 1):
        if seen % STEP == 0:
            step(STEP)
        digest = text_hash(row.prompt)
        if digest in by_hash:
            dropped.append(_drop(row, "exact_duplicate", "exact", 1.0, by_hash[digest]))
            continue
        by_hash[digest] = row
        key, score, signature = near.match(row.prompt)
        if key is not None:
            dropped.append(_drop(row, "near_duplicate", "minhash", score, by_position[key]))
            continue
        near.add(row.position, row.prompt, signature)
        by_position[row.position] = row
        kept.append(row)
    step(seen % STEP)
    return kept


# --- decontamination ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalItem:
    eval: str  # the eval set's spec
    row: int  # 0-based index in it
    id: str
    prompt: str


def open_evals(settings: PrepareSettings) -> tuple[list[EvalItem], list[dict[str, Any]]]:
    """Every eval set's usable items, and per set its name, field and counts. A missing file
    or field stops the command; an item with no usable text is counted, not matched."""
    items: list[EvalItem] = []
    described: list[dict[str, Any]] = []
    for spec in settings.against:
        source = PromptSource(
            spec.spec,
            prompt_field=spec.field,
            split=settings.against_split,
            prompt_option=f"--against {spec.spec}:FIELD",
        )
        source.check()
        usable = unusable = 0
        for row in source:
            if row.prompt is None:
                unusable += 1
                continue
            items.append(EvalItem(spec.spec, row.index, row.id, row.prompt))
            usable += 1
        described.append(
            {"eval": spec.spec, "field": spec.field, "items": usable, "unusable": unusable}
        )
    return items, described


def _grams(words: list[str], size: int) -> set[str]:
    return {" ".join(words[start : start + size]) for start in range(len(words) - size + 1)}


class NgramIndex:
    """Word n-grams of the eval items. A prompt that shares one with an item contains a run of
    n words of it; an item shorter than n words (but of 3 or more) counts as one gram, found
    when the prompt contains all of it word for word. Shorter items are left to MinHash."""

    SHORTEST = 3

    def __init__(self, n: int) -> None:
        self.n = n
        self.grams: dict[str, list[int]] = {}
        self.counts: dict[int, int] = {}  # item key -> its number of grams
        self.sizes: set[int] = set()  # gram lengths indexed

    def add(self, key: int, text: str) -> None:
        words = normalise(text).split()
        if len(words) < min(self.n, self.SHORTEST):
            return
        size = min(self.n, len(words))
        grams = _grams(words, size)
        self.sizes.add(size)
        self.counts[key] = len(grams)
        for gram in grams:
            self.grams.setdefault(gram, []).append(key)

    def match(self, text: str) -> tuple[int, float] | None:
        """The item with the largest share of its grams in the prompt (ties: the smallest key),
        and that share."""
        words = normalise(text).split()
        hits: Counter[int] = Counter()
        for size in self.sizes:
            for gram in _grams(words, size):
                hits.update(self.grams.get(gram, ()))
        if not hits:
            return None
        key = max(sorted(hits), key=lambda k: hits[k] / self.counts[k])
        return key, hits[key] / self.counts[key]


def tfidf_matches(
    prompts: list[str], items: list[EvalItem], threshold: float, step: Callable[[int], None]
) -> list[tuple[int, float] | None]:
    """Per prompt, the eval item of highest TF-IDF cosine similarity if it reaches the threshold
    (STAR-1's detector). The vocabulary and weights are fitted on the pool and the eval sets
    together; prompts go through in batches, so memory grows with the batch, not the pool."""
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
    except ImportError as error:
        raise UserError(
            "--tfidf needs scikit-learn: pip install 'aidsafe[tfidf]' (or scikit-learn)"
        ) from error
    if not prompts or not items:
        return [None] * len(prompts)
    vectorizer = TfidfVectorizer(preprocessor=normalise)
    vectorizer.fit([*prompts, *(item.prompt for item in items)])
    evals_t = vectorizer.transform([item.prompt for item in items]).T.tocsc()
    found: list[tuple[int, float] | None] = []
    for start in range(0, len(prompts), 512):
        similarity = (vectorizer.transform(prompts[start : start + 512]) @ evals_t).tocsr()
        best = similarity.argmax(axis=1).A1
        for row, key in enumerate(best):
            score = float(similarity[row, key])
            found.append((int(key), score) if score >= threshold else None)
        step(similarity.shape[0])
    return found


EMBED_BATCH = 256
# embedding dedup compares a batch with the kept rows this many at a time, so memory stays at
# EMBED_BATCH x KEPT_BLOCK similarities whatever the pool's size
KEPT_BLOCK = 65_536
# float32 cosines of identical unit vectors land just under 1: a threshold of 1 still matches them
COSINE_SLACK = 1e-6


def _endpoint_encoder(settings: PrepareSettings) -> Callable[[list[str]], Any]:
    """Vectors from the OpenAI-compatible /v1/embeddings endpoint, one request per batch."""
    import os

    import httpx
    import numpy

    url = f"{str(settings.embeddings_url).rstrip('/')}/embeddings"
    key = os.environ.get(settings.embeddings_key_env, "not-needed")

    def encode(texts: list[str]) -> Any:
        with httpx.Client(timeout=120, headers={"Authorization": f"Bearer {key}"}) as client:
            try:
                answer = client.post(url, json={"model": settings.embeddings_model, "input": texts})
                answer.raise_for_status()
                data = sorted(answer.json()["data"], key=lambda item: item["index"])
            except (httpx.HTTPError, ValueError, KeyError) as error:
                raise UserError(f"--embeddings-url {settings.embeddings_url}: {error}") from error
        return numpy.asarray([item["embedding"] for item in data], dtype=numpy.float32)

    return encode


def _local_encoder(name: str) -> Callable[[list[str]], Any]:
    """Vectors from a sentence-transformers model loaded here, from a folder or by a name the
    Hugging Face cache (or hub, where it can be reached) holds; on a GPU when there is one."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise UserError(
            "--embeddings-local needs sentence-transformers: pip install 'aidsafe[embeddings]'"
        ) from error
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # its own loading bar; prepare shows passes
    try:
        model = SentenceTransformer(name)
    except (OSError, ValueError) as error:
        raise UserError(f"--embeddings-local {name}: {error}") from error

    def encode(texts: list[str]) -> Any:
        return model.encode(texts, batch_size=64, convert_to_numpy=True, show_progress_bar=False)

    return encode


class Embeddings:
    """The run's embedding model and the unit vectors of the pool rows it has embedded: a row
    is embedded once, for dedup and decontamination both."""

    def __init__(self, settings: PrepareSettings) -> None:
        self._encode = (
            _local_encoder(settings.embeddings_local)
            if settings.embeddings_local
            else _endpoint_encoder(settings)
        )
        self._rows: dict[str, Any] = {}  # prompt text -> vector

    def texts(self, texts: list[str]) -> Any:
        """Unit vectors of `texts` (numpy, one row per text), encoded in batches."""
        import numpy

        parts = [
            self._encode(texts[start : start + EMBED_BATCH])
            for start in range(0, len(texts), EMBED_BATCH)
        ]
        matrix = numpy.concatenate(parts) if parts else numpy.zeros((0, 1), numpy.float32)
        matrix = matrix.astype(numpy.float32, copy=False)
        norms = numpy.linalg.norm(matrix, axis=1, keepdims=True)
        return matrix / numpy.maximum(norms, 1e-12)

    def rows(self, rows: list[PoolRow]) -> Any:
        """Unit vectors of the rows' prompts, encoding only those not encoded before."""
        import numpy

        missing = list(dict.fromkeys(row.prompt for row in rows if row.prompt not in self._rows))
        if missing:
            for text, vector in zip(missing, self.texts(missing), strict=True):
                self._rows[text] = vector
        return numpy.stack([self._rows[row.prompt] for row in rows])


def embedding_dedup(
    rows: list[PoolRow],
    embeddings: Embeddings,
    threshold: float,
    dropped: list[dict[str, Any]],
    step: Callable[[int], None],
    settled: int = 0,
) -> list[PoolRow]:
    """The rows left after dropping each one whose embedding cosine with an earlier kept row
    reaches the threshold (the first copy in pool order is kept, as for MinHash). Every pair is
    compared, batch by batch: exact, time growing with pool x kept, memory with the pool. The
    first `settled` rows are known to be kept (a pool deduped before): they are compared with
    the rows after them, not with each other."""
    import numpy

    kept: list[PoolRow] = []
    matrix: Any = None  # the kept rows' vectors, grown by doubling
    for start in range(0, len(rows), EMBED_BATCH):
        batch = rows[start : start + EMBED_BATCH]
        vectors = embeddings.rows(batch)
        if start + len(batch) <= settled:
            matrix = _grown(matrix, len(kept), vectors)
            kept += batch
            step(len(batch))
            continue
        best = numpy.full(len(batch), -1.0, numpy.float32)
        nearest = numpy.zeros(len(batch), numpy.int64)
        for block in range(0, len(kept), KEPT_BLOCK):
            similarity = vectors @ matrix[block : min(block + KEPT_BLOCK, len(kept))].T
            top = similarity.argmax(axis=1)
            score = similarity[numpy.arange(len(batch)), top]
            better = score > best
            best[better], nearest[better] = score[better], top[better] + block
        within = vectors @ vectors.T
        chosen: list[int] = []  # positions in the batch kept so far
        for n, row in enumerate(batch):
            score, match = float(best[n]), int(nearest[n])
            if chosen:
                scores = within[n, chosen]
                m = int(scores.argmax())
                if scores[m] > score:
                    score, match = float(scores[m]), len(kept) + m
            if start + n < settled:
                chosen.append(n)
            elif score >= threshold - COSINE_SLACK:
                twin = kept[match] if match < len(kept) else batch[chosen[match - len(kept)]]
                dropped.append(_drop(row, "near_duplicate", "embedding", score, twin))
            else:
                chosen.append(n)
        matrix = _grown(matrix, len(kept), vectors[chosen])
        kept += [batch[n] for n in chosen]
        step(len(batch))
    return kept


def _grown(matrix: Any, used: int, vectors: Any) -> Any:
    """`matrix` (its first `used` rows in use; None: none yet) with `vectors` after them, grown
    by doubling, so appending stays linear over a pass."""
    import numpy

    needed = used + len(vectors)
    if matrix is None or needed > len(matrix):
        width = vectors.shape[1]
        rows = max(needed, 2 * (0 if matrix is None else len(matrix)), 1)
        grown = numpy.zeros((rows, width), numpy.float32)
        if matrix is not None:
            grown[:used] = matrix[:used]
        matrix = grown
    matrix[used:needed] = vectors
    return matrix


def embedding_matches(
    rows: list[PoolRow],
    evals: Any,
    threshold: float,
    embeddings: Embeddings,
    step: Callable[[int], None],
) -> list[tuple[int, float] | None]:
    """Per row, the eval item (a row of the unit vectors `evals`) of highest embedding cosine
    similarity if it reaches the threshold (STAR-1's detector, 0.8). Rows are embedded and
    compared in batches, so memory grows with the eval sets and a batch, not the pool."""
    if not rows or not len(evals):
        return [None] * len(rows)
    found: list[tuple[int, float] | None] = []
    for start in range(0, len(rows), EMBED_BATCH):
        batch = rows[start : start + EMBED_BATCH]
        similarity = embeddings.rows(batch) @ evals.T
        best = similarity.argmax(axis=1)
        for row, key in enumerate(best):
            score = float(similarity[row, key])
            found.append((int(key), round(score, 4)) if score >= threshold - COSINE_SLACK else None)
        step(len(batch))
    return found


def _contaminated(row: PoolRow, detector: str, score: float, item: EvalItem) -> dict[str, Any]:
    return {
        "source": row.source,
        "row": row.row,
        "id": row.id,
        "prompt": row.prompt,
        "reason": "contaminated",
        "detector": detector,
        "score": round(score, 4),
        "eval_item": {"eval": item.eval, "row": item.row, "id": item.id, "prompt": item.prompt},
    }


class Cleaner:
    """Dedup and decontamination with one run's settings, eval items and embedding model, each
    pass shown as a progress line; every drop goes to `dropped`."""

    def __init__(
        self, settings: PrepareSettings, items: list[EvalItem], dropped: list[dict[str, Any]]
    ) -> None:
        self.settings = settings
        self.items = items
        self.dropped = dropped
        self.embeddings = Embeddings(settings) if settings.embeddings else None
        self._eval_vectors: Any = None

    def dedup(self, rows: Iterable[PoolRow], what: str = "pool", settled: int = 0) -> list[PoolRow]:
        """Exact and MinHash dedup, then (with --embedding-dedup) embedding dedup; the first
        `settled` rows were deduped before (see `embedding_dedup`)."""
        with pass_progress(self.settings.show_progress, f"dedup {what}", None) as step:
            kept = deduplicate(rows, self.settings, self.dropped, step)
        if self.settings.embedding_dedup:
            assert self.embeddings is not None
            with pass_progress(
                self.settings.show_progress, f"dedup {what} by embedding", len(kept)
            ) as step:
                kept = embedding_dedup(
                    kept,
                    self.embeddings,
                    self.settings.embedding_dedup_threshold,
                    self.dropped,
                    step,
                    settled,
                )
        return kept

    def decontaminate(self, rows: list[PoolRow], what: str = "pool") -> list[PoolRow]:
        """The rows that match no eval item; each other one goes to `dropped` with the first
        detector that matched it, in the order n-gram overlap, MinHash Jaccard, TF-IDF cosine,
        embedding cosine."""
        if not self.items:
            return rows
        settings, items = self.settings, self.items
        ngrams = NgramIndex(settings.ngram)
        near = NearIndex(settings.against_threshold, settings.shingle)
        for key, item in enumerate(items):
            ngrams.add(key, item.prompt)
            near.add(key, item.prompt, minhash_of(shingles(item.prompt, settings.shingle)))
        clean: list[PoolRow] = []
        show = settings.show_progress
        with pass_progress(show, f"decontaminate {what}: n-grams, MinHash", len(rows)) as step:
            for seen, row in enumerate(rows, 1):
                if seen % STEP == 0:
                    step(STEP)
                found = ngrams.match(row.prompt)
                if found is not None:
                    self.dropped.append(_contaminated(row, "ngram", found[1], items[found[0]]))
                    continue
                nearest, score, _ = near.match(row.prompt)
                if nearest is not None:
                    self.dropped.append(_contaminated(row, "minhash", score, items[nearest]))
                    continue
                clean.append(row)
            step(len(rows) % STEP)
        if settings.tfidf:
            with pass_progress(show, f"decontaminate {what}: TF-IDF", len(clean)) as step:
                matches = tfidf_matches(
                    [row.prompt for row in clean], items, settings.tfidf_threshold, step
                )
            clean = self._drop_matched(clean, matches, "tfidf")
        if self.embeddings is not None:
            with pass_progress(show, f"decontaminate {what}: embeddings", len(clean)) as step:
                if self._eval_vectors is None:
                    self._eval_vectors = self.embeddings.texts([item.prompt for item in items])
                matches = embedding_matches(
                    clean, self._eval_vectors, settings.embedding_threshold, self.embeddings, step
                )
            clean = self._drop_matched(clean, matches, "embedding")
        return clean

    def _drop_matched(
        self, rows: list[PoolRow], matches: list[tuple[int, float] | None], detector: str
    ) -> list[PoolRow]:
        kept: list[PoolRow] = []
        for row, match in zip(rows, matches, strict=True):
            if match is None:
                kept.append(row)
            else:
                self.dropped.append(_contaminated(row, detector, match[1], self.items[match[0]]))
        return kept


def output_ids(rows: list[PoolRow]) -> list[str]:
    """An id per kept row, unique over the pool (generate rejects a repeated id): the source's
    id, or `SOURCE:ID` where two rows share it, or `SOURCE:ID:ROW` where that is shared too."""
    counts = Counter(row.id for row in rows)
    ids = [row.id if counts[row.id] == 1 else f"{row.source}:{row.id}" for row in rows]
    counts = Counter(ids)
    return [
        name if counts[name] == 1 else f"{name}:{row.row}"
        for name, row in zip(ids, rows, strict=True)
    ]


def output_row(row: PoolRow, row_id: str) -> dict[str, Any]:
    """A row of prompts.jsonl, as `aidsafe generate` reads it (`id`, `prompt`), with where it
    came from in `metadata`."""
    return {
        "id": row_id,
        "prompt": row.prompt,
        "metadata": {
            "source": row.source,
            "source_id": row.id,
            "source_row": row.row,
            "categories": row.categories,
            **({"policies": row.policies} if row.policies is not None else {}),
            **(
                {"benign_contrast": True, "contrast_of": row.contrast_of} if row.contrast_of else {}
            ),
        },
    }


def bucket_of(row: PoolRow) -> tuple[str, str]:
    """The selection bucket: the source and the first category, else the classifier's first
    policy tag ("none" without either)."""
    if row.categories:
        return row.source, row.categories[0]
    return row.source, row.policies[0] if row.policies else "none"


def select(
    rows: list[PoolRow], ids: list[str], settings: PrepareSettings, dropped: list[dict[str, Any]]
) -> tuple[list[PoolRow], list[str], dict[str, dict[str, int]]]:
    """`--select N`: the rows (and their ids) kept by the balanced rule `generate --select`
    uses, over source x first category; each other row goes to `dropped`. Also the size of
    each bucket before and after."""
    pairs = list(zip(rows, ids, strict=True))
    before = Counter(bucket_of(row) for row in rows)
    if settings.select is None:
        return rows, ids, {}
    chosen = balanced_subset(
        pairs, settings.select, lambda pair: bucket_of(pair[0]), lambda pair: pair[1], settings.seed
    )
    picked = {row.position for row, _ in chosen}
    for row in rows:
        if row.position not in picked:
            dropped.append(
                {
                    "source": row.source,
                    "row": row.row,
                    "id": row.id,
                    "prompt": row.prompt,
                    "reason": "not_selected",
                    "bucket": list(bucket_of(row)),
                }
            )
    after = Counter(bucket_of(row) for row, _ in chosen)
    buckets = {
        f"{source} / {category}": {"before": count, "after": after[(source, category)]}
        for (source, category), count in sorted(before.items())
    }
    return [row for row, _ in chosen], [row_id for _, row_id in chosen], buckets


def prepare(
    inputs: list[InputSpec], out: Path, settings: PrepareSettings | None = None
) -> PrepareSummary:
    """Read the inputs into one pool, drop duplicates, and write DIR/prompts.jsonl,
    DIR/report.json and DIR/report.html. Nothing is dropped without a line in the report."""
    settings = settings or PrepareSettings()
    settings.check()
    sources, fields = open_sources(inputs, settings)
    items, evals = open_evals(settings)
    dropped: list[dict[str, Any]] = []
    read: Counter[str] = Counter()

    def counted(rows: Iterator[PoolRow]) -> Iterator[PoolRow]:
        for row in rows:
            read[row.source] += 1
            yield row

    cleaner = Cleaner(settings, items, dropped)
    pool = _pool(inputs, sources, dropped, fields)
    clean = cleaner.decontaminate(cleaner.dedup(counted(pool)))
    classified = _classify(clean, out, settings) if settings.classify else None
    contrasted = None
    if settings.contrast is not None:
        added, contrasted = _contrast(clean, out, settings, cleaner)
        clean = clean + added
    kept, ids, buckets = select(clean, output_ids(clean), settings, dropped)
    matched = Counter(entry["eval_item"]["eval"] for entry in dropped if "eval_item" in entry)
    for described in evals:
        described["matched"] = matched[described["eval"]]
    for entry in dropped:
        if entry["reason"] == "unusable":
            read[entry["source"]] += 1
    kept_by_source = Counter(row.source for row in kept)
    per_source = {
        spec.source: {"read": read[spec.source], "kept": kept_by_source[spec.source]}
        for spec in inputs
    }
    summary = PrepareSummary(
        out=out,
        read=sum(read.values()),
        kept=len(kept),
        dropped=dict(sorted(Counter(entry["reason"] for entry in dropped).items())),
        per_source=per_source,
        evals=evals,
        buckets=buckets,
        classified=classified,
        contrast=contrasted,
    )
    report = {
        "created": now(),
        "inputs": [{"source": spec.source, "spec": spec.spec} for spec in inputs],
        "settings": {
            "near_threshold": settings.near_threshold,
            "shingle": settings.shingle,
            "num_perm": NUM_PERM,
            "prompt_field": settings.prompt_field,
            "id_field": settings.id_field,
            "split": settings.split,
            "against_split": settings.against_split,
            "ngram": settings.ngram,
            "against_threshold": settings.against_threshold,
            "tfidf_threshold": settings.tfidf_threshold if settings.tfidf else None,
            "embeddings": {
                "model": settings.embeddings_local or settings.embeddings_model,
                "threshold": settings.embedding_threshold,
                "dedup_threshold": settings.embedding_dedup_threshold
                if settings.embedding_dedup
                else None,
            }
            if settings.embeddings
            else None,
            "category_field": fields,
            "select": settings.select,
            "seed": settings.seed,
        },
        "evals": evals,
        "read": summary.read,
        "kept": summary.kept,
        "dropped_by_reason": summary.dropped,
        "per_source": per_source,
        "buckets": buckets,
        **({"classified": classified} if classified is not None else {}),
        **({"contrast": contrasted} if contrasted is not None else {}),
        "dropped": dropped,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / PROMPTS, (output_row(row, i) for row, i in zip(kept, ids, strict=True)))
    write_atomic(out / REPORT_JSON, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_atomic(out / REPORT_HTML, report_html(report))
    return summary


def _classify(rows: list[PoolRow], out: Path, settings: PrepareSettings) -> dict[str, Any]:
    """Tag the rows with the classifier (resumable in `out`); how many got each tag, and how
    many could not be tagged (kept, untagged: classifications.jsonl has the reason)."""
    assert settings.config is not None
    ids = output_ids(rows)
    tags = asyncio.run(
        ClassifyPrompts().run(
            [(row_id, row.prompt) for row_id, row in zip(ids, rows, strict=True)],
            RunDirectory(out),
            settings.config,
            {},
            settings.show_progress,
        )
    )
    counts: Counter[str] = Counter()
    failed = 0
    for row, row_id in zip(rows, ids, strict=True):
        row.policies = tags[row_id]
        if row.policies is None:
            failed += 1
        counts.update(row.policies or ["none"])
    return {"by_policy": dict(sorted(counts.items())), "failed": failed}


def _contrast(
    rows: list[PoolRow],
    out: Path,
    settings: PrepareSettings,
    cleaner: Cleaner,
) -> tuple[list[PoolRow], dict[str, Any]]:
    """Benign look-alikes of the rows that touch a policy (a category or a policy tag), each
    put through the same dedup (against the whole pool) and decontamination as any prompt;
    the ones kept, and how many were asked for, written, kept and failed."""
    assert settings.config is not None and settings.contrast is not None
    ids = dict(zip((row.position for row in rows), output_ids(rows), strict=True))
    touching = [row for row in rows if row.categories or row.policies]
    written = asyncio.run(
        ContrastPrompts().run(
            [(ids[row.position], row.prompt) for row in touching],
            RunDirectory(out),
            settings.config,
            {"count": settings.contrast},
            settings.show_progress,
        )
    )
    position = max((row.position for row in rows), default=-1) + 1
    added: list[PoolRow] = []
    for row in touching:
        parent = ids[row.position]
        for n, text in enumerate(written[parent] or []):
            added.append(
                PoolRow(
                    position,
                    row.source,
                    row.row,
                    f"{parent}~contrast{n}",
                    text,
                    ["benign_contrast"],
                    contrast_of=parent,
                )
            )
            position += 1
    # the pool's rows stay first, and are kept: they were deduped already
    unique = cleaner.dedup(rows + added, "look-alikes", settled=len(rows))
    kept = cleaner.decontaminate([row for row in unique if row.contrast_of], "look-alikes")
    figures = {
        "prompts": len(touching),
        "failed": sum(1 for row in touching if written[ids[row.position]] is None),
        "written": len(added),
        "kept": len(kept),
    }
    return kept, figures


# --- the report page -----------------------------------------------------------------------------


def _matched(entry: dict[str, Any]) -> str:
    kept = entry.get("duplicate_of")
    if kept:
        return f"{kept['source']} row {kept['row']} (id {kept['id']})"
    item = entry.get("eval_item")
    if item:
        return f"eval {item['eval']} row {item['row']} (id {item['id']}): {item['prompt']}"
    if "bucket" in entry:
        return "bucket " + " / ".join(entry["bucket"])
    return ""


def report_html(report: dict[str, Any]) -> str:
    """report.json as one static page: the counts, then a table of every dropped prompt."""

    def cell(value: Any) -> str:
        return f"<td>{html.escape('' if value is None else str(value))}</td>"

    counts = "".join(
        f"<tr>{cell(name)}{cell(numbers['read'])}{cell(numbers['kept'])}</tr>"
        for name, numbers in report["per_source"].items()
    )
    reasons = "".join(
        f"<tr>{cell(reason)}{cell(count)}</tr>"
        for reason, count in report["dropped_by_reason"].items()
    )
    buckets = "".join(
        f"<tr>{cell(name)}{cell(sizes['before'])}{cell(sizes['after'])}</tr>"
        for name, sizes in report["buckets"].items()
    )
    selection = (
        '<h2>Selection, by source / category</h2>\n<table id="buckets"><tr><th>bucket</th>'
        f"<th>before</th><th>after</th></tr>{buckets}</table>"
        if buckets
        else ""
    )
    dropped = "".join(
        "<tr>"
        + cell(entry["reason"])
        + cell(entry["source"])
        + cell(entry["row"])
        + cell(entry["id"])
        + cell(entry["prompt"] if entry["prompt"] is not None else entry.get("detail"))
        + cell(entry.get("detector"))
        + cell(entry.get("score"))
        + cell(_matched(entry))
        + "</tr>"
        for entry in report["dropped"]
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>aidsafe prepare report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }}
th {{ background: #eee; }}
</style></head><body>
<h1>Prompt pool: {report["kept"]} kept of {report["read"]} read</h1>
<p>Made {html.escape(report["created"])}.</p>
<h2>Sources</h2>
<table id="sources"><tr><th>source</th><th>read</th><th>kept</th></tr>{counts}</table>
<h2>Dropped, by reason</h2>
<table id="reasons"><tr><th>reason</th><th>prompts</th></tr>{reasons}</table>
{selection}
<h2>Every dropped prompt</h2>
<table id="dropped"><tr><th>reason</th><th>source</th><th>row</th><th>id</th><th>prompt</th>
<th>detector</th><th>score</th><th>matched</th></tr>{dropped}</table>
</body></html>
"""

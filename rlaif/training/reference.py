"""The reference model's log-probs of every chosen and rejected answer, computed once and kept by content.

    trainer = StoredReferenceDPO(store=ReferenceStore(run / "ref_logps"), model=..., args=DPOConfig(
        precompute_ref_log_probs=True, ...), ...)

dDPO's loss needs log pi_ref(y|x) of each chosen and rejected answer under the frozen reference
(the model training starts from). TRL's `precompute_ref_log_probs` computes them in one pass before
training, but keeps them only in the process's temporary dataset cache (TRL #3985), so every run,
every variant of a sweep and every rerun runs the reference model again for the same numbers. This
store keeps them: one Arrow file per key under the run (`<run>/ref_logps/<key>.arrow`, columns
`ref_chosen_logps`, `ref_rejected_logps` in the tokenized dataset's row order, and `<key>.json`
saying what they are of). A trainer whose key finds a file reads it and feeds TRL the columns its
precompute would have added, so the reference model is neither run nor loaded (with
`precompute_ref_log_probs` TRL loads no second model; the policy before training is the reference).

The key is a hash of what the numbers depend on, by content:
    reference   TRL's own hash of the reference weights (`hash_module`, which its precompute takes anyway)
    rows        the token ids of every prompt, chosen and rejected answer after TRL tokenized them:
                the tokenizer, its chat template, the dataset version and the split, all at once
    split       the split's name (train / eval) and its rows' count
    settings    max_length, truncation_mode, ld_alpha, padding_free (what TRL's collator and its
                reference pass do with the rows), the compute precision (bf16 / fp16 / the weights'
                dtype, the device) and TRL's version
Anything else changing (a loss type, beta, a learning rate) leaves the key as it is: variants of a
sweep share one file. A changed input changes the key and is computed afresh.

Under `accelerate launch` every process computes the same key (the first process's is broadcast,
as TRL does for its own cache) and makes the same choice: all read the file, or all take part in
the reference pass (TRL's loop, each process its share of the rows, gathered), after which the
first process writes the file (to a temporary name, then renamed), the others wait for it, and all
read it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from trl import DPOTrainer

log = logging.getLogger(__name__)

COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
SETTINGS = ("max_length", "truncation_mode", "ld_alpha", "padding_free", "bf16", "fp16")


class ReferenceStore:
    """A folder of reference log-probs, one Arrow file per key; counts what it computed and read."""

    def __init__(self, root: str | Path, about: dict[str, Any] | None = None):
        self.root = Path(root)
        self.about = about or {}  # recorded beside each file (the start model, the dataset): for people
        self.computed: list[str] = []
        self.read: list[str] = []

    def path(self, key: str) -> Path:
        return self.root / f"{key}.arrow"

    def load(self, key: str, rows: int) -> Any:
        """The stored columns for `key` as a Dataset, or None (absent, or not `rows` long). Read into
        memory (8 bytes a pair): a memory-mapped file would have datasets write its caches beside it."""
        import pyarrow as pa
        from datasets import Dataset
        from datasets.table import InMemoryTable

        path = self.path(key)
        if not path.exists():
            return None
        try:
            with pa.memory_map(str(path)) as source:
                found = Dataset(InMemoryTable(pa.ipc.open_stream(source).read_all()))
        except (OSError, ValueError) as e:
            log.warning("%s: unreadable (%s); computing the reference log-probs again", path, e)
            return None
        if len(found) != rows or set(found.column_names) != set(COLUMNS):
            log.warning("%s: %d rows, columns %s, where %d rows were expected; computing again",
                        path, len(found), found.column_names, rows)
            return None
        self.read.append(key)
        return found

    def save(self, key: str, columns: dict[str, Any], meta: dict[str, Any]) -> Path:
        """Write the two columns (CPU tensors) for `key`; atomic, so a reader never sees half a file."""
        import pyarrow as pa

        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        table = pa.table({c: pa.array(columns[c].numpy()) for c in COLUMNS})
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(tmp, path)
        meta_path = path.with_suffix(".json")
        meta_path.write_text(json.dumps({**self.about, **meta}, indent=2, default=str))
        self.computed.append(key)
        return path


def rows_digest(dataset: Any) -> str:
    """A hash of the tokenized rows' ids (prompt, chosen, rejected), read from Arrow without Python lists."""
    h = hashlib.sha256()
    table = dataset.with_format("arrow")[:]  # the rows in order, an index mapping applied
    for name in ("prompt_ids", "chosen_ids", "rejected_ids"):
        column = table.column(name).combine_chunks()
        h.update(name.encode())
        h.update(column.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype("int64").tobytes())
        h.update(column.flatten().to_numpy(zero_copy_only=False).astype("int64").tobytes())
    return h.hexdigest()


def reference_key(model_hash: str, dataset: Any, name: str, args: Any, dtype: str, device: str) -> tuple[str, dict]:
    """The store's key for `dataset`'s reference log-probs, and what it was made of."""
    from importlib.metadata import version

    parts = {"reference": model_hash, "rows": rows_digest(dataset), "split": name, "count": len(dataset),
             **{s: getattr(args, s, None) for s in SETTINGS}, "dtype": dtype, "device": device,
             "trl": version("trl")}
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20], parts


class StoredReferenceDPO(DPOTrainer):
    """TRL's DPOTrainer whose reference pass (`precompute_ref_log_probs`) goes through a ReferenceStore."""

    def __init__(self, *args: Any, store: ReferenceStore | None = None, **kwargs: Any):
        self.reference_store = store  # set before TRL's __init__, which runs the precompute
        super().__init__(*args, **kwargs)

    def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int) -> Any:
        from accelerate.utils import broadcast_object_list
        from datasets import concatenate_datasets

        store = self.reference_store
        if store is None or not self._precompute_model_hash:
            return super()._precompute_ref_logps(dataset, name, batch_size)
        model = self.ref_model or self.model
        key, parts = reference_key(self._precompute_model_hash, dataset, name, self.args,
                                   str(next(model.parameters()).dtype), self.accelerator.device.type)
        found = store.load(key, len(dataset))
        decision = [key, found is not None]
        broadcast_object_list(decision, from_process=0)  # every process makes the first one's choice
        key, hit = decision
        if hit:
            found = found if found is not None else store.load(key, len(dataset))
            log.info("reference log-probs of the %s split (%d rows) read from %s: the reference model is not run",
                     name, len(dataset), store.path(key))
            return concatenate_datasets([dataset, found], axis=1)
        log.info("computing the reference log-probs of the %s split (%d rows); kept in %s", name, len(dataset),
                 store.path(key))
        columns = self._reference_pass(dataset, batch_size)
        if self.accelerator.is_main_process:
            store.save(key, columns, parts)
        else:
            store.computed.append(key)
        self.accelerator.wait_for_everyone()  # then every process reads the one file the first wrote
        found = store.load(key, len(dataset))
        if found is None:
            raise RuntimeError(f"{store.path(key)}: the reference log-probs just written cannot be read")
        store.read.pop()  # computed here, not read
        return concatenate_datasets([dataset, found], axis=1)

    def _reference_pass(self, dataset: Any, batch_size: int) -> dict[str, Any]:
        """TRL's reference pass (DPOTrainer._precompute_ref_logps's loop), its results gathered from
        every process in the rows' order; TRL's own version would also write them to its cache
        file, which lies in each process's own temporary datasets cache, where the others cannot read it."""
        import torch
        from torch.utils.data import DataLoader
        from trl.models import prepare_deepspeed

        loader = self.accelerator.prepare(DataLoader(
            dataset, batch_size=batch_size, collate_fn=self.data_collator, shuffle=False,
            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory))
        if self.ref_model is None and self.is_deepspeed_enabled:  # as TRL: parameters placed and gathered
            if self._precompute_engine is None:
                self._precompute_engine = prepare_deepspeed(self.model, self.accelerator)
            model = self._precompute_engine
        else:
            model = self.ref_model or self.model
        chosen, rejected = [], []
        for batch in loader:
            c, r = self.accelerator.gather_for_metrics(self.compute_ref_log_probs(model, batch))
            chosen.append(c.float().cpu())
            rejected.append(r.float().cpu())
        return {"ref_chosen_logps": torch.cat(chosen), "ref_rejected_logps": torch.cat(rejected)}

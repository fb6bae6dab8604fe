"""Supervised fine-tuning recipe: TRL's SFTTrainer on rows tokenized and masked by `gpu_runner.train.data`.

The rows arrive with `input_ids` and `labels` (-100 where no loss is taken), so TRL trains exactly the
tokens our masking chose. Batches come from `LengthGroupedBatchSampler`; with `packing`, rows are packed
best-fit into `max_seq_length` rows beforehand and trained padding-free, and each packed example keeps its
own attention block (the model receives per-example position ids, from which transformers builds a
block-diagonal mask, or which FlashAttention reads as sequence boundaries).
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset
from torch.utils.data import DataLoader
from trl import SFTConfig, SFTTrainer
from trl.data_utils import pack_dataset

from gpu_runner.train.checkpoints import SafeCheckpointMixin
from gpu_runner.train.data import LengthGroupedBatchSampler, SupervisedRow


class TailorSFTTrainer(SafeCheckpointMixin, SFTTrainer):
    """SFTTrainer with pickle-free atomic checkpoints and length-grouped batches."""

    def get_train_dataloader(self) -> DataLoader:
        dataset = self._remove_unused_columns(self.train_dataset, description="Training")
        sampler = LengthGroupedBatchSampler(
            [len(ids) for ids in dataset["input_ids"]],
            self.args.per_device_train_batch_size,
            seed=self.args.seed,
        )
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)


def supervised_dataset(rows: list[SupervisedRow]) -> Dataset:
    """The rows as a `datasets.Dataset` with `input_ids` and `labels`."""
    return Dataset.from_dict({"input_ids": [r.input_ids for r in rows], "labels": [r.labels for r in rows]})


def pack_rows(dataset: Dataset, max_seq_length: int) -> Dataset:
    """Best-fit-decreasing packing into rows of at most `max_seq_length` tokens; adds `seq_lengths`."""
    return pack_dataset(dataset, max_seq_length, strategy="bfd")


def build_trainer(
    *,
    model: Any,
    tokenizer: Any,
    train_dataset: Dataset,
    eval_dataset: Dataset | None,
    peft_config: Any,
    arguments: dict[str, Any],
    padding_free: bool,
    callbacks: list[Any],
) -> TailorSFTTrainer:
    """An SFT trainer over pre-tokenized rows. `padding_free` flattens each micro-batch into one row
    (packed rows always are; unpacked ones only with a variable-length attention kernel)."""
    args = SFTConfig(
        **{**arguments, "max_length": None if padding_free else arguments["max_length"]},
        packing=False,
        padding_free=padding_free,
        completion_only_loss=False,
        assistant_only_loss=False,
        dataset_kwargs=None,
    )
    trainer = TailorSFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    return trainer

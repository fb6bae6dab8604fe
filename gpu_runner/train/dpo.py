"""DPO recipe: TRL's DPOTrainer on preference pairs tokenized by `gpu_runner.train.data`.

With a LoRA adapter the reference policy is the base model with the adapter switched off, so no second
model is loaded. Rows arrive as `prompt_ids`, `chosen_ids`, `rejected_ids` (rendered with the base model's
chat template, end-of-turn marker included in each reply); TRL's collator builds the completion mask that
limits the log-probabilities to the replies. Batches are length-grouped like SFT's.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset
from torch.utils.data import DataLoader
from trl import DPOConfig, DPOTrainer

from gpu_runner.train.checkpoints import SafeCheckpointMixin
from gpu_runner.train.data import LengthGroupedBatchSampler, PreferenceRow


class TailorDPOTrainer(SafeCheckpointMixin, DPOTrainer):
    """DPOTrainer with pickle-free atomic checkpoints, length-grouped batches and our own tokenization."""

    def _prepare_dataset(
        self, dataset: Dataset, processing_class: Any, args: Any, dataset_name: str
    ) -> Dataset:
        # Already tokenized by gpu_runner.train.data, with the same chat template and truncation rule.
        return dataset

    def get_train_dataloader(self) -> DataLoader:
        dataset = self._remove_unused_columns(self.train_dataset, description="Training")
        lengths = [
            len(p) + max(len(c), len(r))
            for p, c, r in zip(
                dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"], strict=True
            )
        ]
        sampler = LengthGroupedBatchSampler(
            lengths, self.args.per_device_train_batch_size, seed=self.args.seed
        )
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)


def preference_dataset(rows: list[PreferenceRow]) -> Dataset:
    """The pairs as a `datasets.Dataset` with `prompt_ids`, `chosen_ids`, `rejected_ids`."""
    return Dataset.from_dict(
        {
            "prompt_ids": [r.prompt_ids for r in rows],
            "chosen_ids": [r.chosen_ids for r in rows],
            "rejected_ids": [r.rejected_ids for r in rows],
        }
    )


def build_trainer(
    *,
    model: Any,
    tokenizer: Any,
    train_dataset: Dataset,
    eval_dataset: Dataset | None,
    peft_config: Any,
    arguments: dict[str, Any],
    beta: float,
    callbacks: list[Any],
) -> TailorDPOTrainer:
    """A DPO trainer (sigmoid loss) over pre-tokenized pairs."""
    args = DPOConfig(**arguments, beta=beta, precompute_ref_log_probs=False)
    return TailorDPOTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )

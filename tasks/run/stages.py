"""Every stage's Prefect task, made by the one factory (``tasks.run.contract.stage_task``)."""

from __future__ import annotations

from tasks.data.dedup import dedup
from tasks.data.ingest import ingest
from tasks.data.pack import pack
from tasks.data.tokenizer import train_tokenizer
from tasks.demo.stage import make_demo_data
from tasks.judge.evaluation import evaluate_checkpoint
from tasks.judge.register import register
from tasks.run.contract import stage_task
from tasks.train.finetune import finetune
from tasks.train.pretrain import pretrain

demo_data_task = stage_task(make_demo_data)
ingest_task = stage_task(ingest)
dedup_task = stage_task(dedup)
tokenizer_task = stage_task(train_tokenizer)
pack_task = stage_task(pack)
pretrain_task = stage_task(pretrain)
finetune_task = stage_task(finetune)
evaluate_task = stage_task(evaluate_checkpoint)
register_task = stage_task(register)

"""The trainer: durable sample buffer, fine-tuning rounds, evaluation gate, publishing.

Data flows through one module per stage: ``buffer`` (training.samples -> Parquet segments),
``rounds`` (importance-sampled contrastive fine-tuning of a copy of the encoder), ``gate`` (holdout
evaluation and the publish decision), ``publish`` (registry version + announcement), ``service``
(the ``coldstart trainer`` Kafka loop and the ``models list|rollback`` commands).
"""

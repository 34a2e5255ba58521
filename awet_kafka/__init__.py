"""The Kafka transport: how events travel, knowing no service that sends or reads them.

- ``bus``: ``BusService``, the at-least-once consume -> handle -> produce -> checkpoint loop
  (dead letters, commit after delivery, rebalances, graceful stop, bounded ``run``).
- ``producer``: ``EventProducer`` (contract check per topic, correlation header, delivery
  errors raised); ``publish``: ``publish_acknowledged`` (re-sends what failed).
- ``dead_letters``: the ``DeadLetter`` envelope of an undecodable or refused message.
- ``tail``: ``TopicTail``, a background reader of side topics (no group, no commits).
- ``shared_fetch``: one fetch of a topic for all services of one process.
- ``admin``: topic creation and listing; ``settings``: consumer/producer configs, group ids.

It imports the event contracts (``awet_dagster.contracts``) and the handler API
(``awet_dagster.streaming.outputs``), never ``live`` (the services and the runner that compose
this with the core), the storage or a domain component (import-linter, pyproject.toml).
"""

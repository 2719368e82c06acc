"""OpenAI's Batch API: a JSONL file of chat requests, run line by line, answered in files.

The pieces, and the seam a runner plugs into:

- ``record`` (pure): the ``Batch`` and ``FileObject`` records, in OpenAI's fields, and the
  ids: ``batch_<hex>``, ``file-<hex>``, a line's job ``{batch_id}-{line:06d}`` (lines count
  from 1, as the ``line`` of OpenAI's validation errors does).
- ``lines`` (pure): the input file checked line by line (``BatchLine``; errors name the
  line), and the output and error files written from each line's ``LineOutcome``.
- ``store`` (DynamoDB + S3): records in the jobs table (``id`` = the batch or file id, the
  record as JSON in ``record``, so no attribute of ours meets the table's TTL attribute or
  the jobs' indexes), file contents at ``files/{file_id}`` in the jobs bucket, a listing
  index at ``batches/index/...``.
- ``runners``: how a batch's lines run. A runner is anything with

  - ``name: str`` (``"fanout"``, ``"transform"``);
  - ``start(batch, lines) -> None``: submit every line; idempotent (called again after a
    crash, it must neither re-create nor re-run a line already submitted or finished);
  - ``outcomes(batch, lines) -> dict[int, LineOutcome]``: the lines finished so far, by line
    number (a line absent is still queued or running);
  - ``cancel(batch, lines) -> None``: stop the lines not started; finished ones are kept.

  ``register_runner(name, factory)`` makes one choosable; ``choose_runner`` picks per batch:
  ``metadata["llmhost_runner"]`` when the client names one, otherwise from the batch's size
  and its model's state (small and live: ``fanout``; large or asleep: ``transform`` when
  registered).
- ``service.Batches``: create (validate, choose, start), retrieve, list, cancel, and
  ``advance(batch_id)``, which moves a batch on: starts one left ``validating`` by a crash,
  finalises one whose lines are all finished (output and error files ordered by line), ends
  a cancel, expires one past its window. It is idempotent and safe to call from anywhere,
  any number of times: a runner calls it when its lines are done (the transform runner on
  its job's state change), the schedule calls it for every open batch.
- ``progress.line_finished(batch_id, status)``: the jobs worker calls it when a batch line's
  job really changed to a terminal status (not for a duplicate completion); it counts the
  line and, on the last one, advances the batch. The counts are for progress only:
  finalisation reads every line's job, so a count lost in a crash never loses a line.
"""

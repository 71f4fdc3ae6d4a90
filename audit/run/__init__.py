"""Running: loaded models over data, batch by batch, on a device.

Owns the adapter of each model kind (one :class:`~.adapters.Batch` of scored positions per batch, whatever the
kind), the one evaluation loop (:func:`.evaluate.evaluate_plan`: the plan of batches, the prediction cache that
makes a run resumable, the split of batches over the processes of a launched run), the device, dtype and batch
size (:mod:`.device`) and the process group (:mod:`.distributed`). May import the foundation, :mod:`audit.load`
and :mod:`audit.reduce` (a token batch is reduced to columns as soon as it is computed).
"""

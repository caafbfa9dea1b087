"""gradclip for TensorFlow ``GradientTape`` loops: ``clip`` (stateless) and ``Clipper`` (any policy).

Both work eagerly and inside ``tf.function``. For Keras ``model.fit`` use :mod:`gradclip.keras`.

Example:
    >>> import tensorflow as tf, gradclip, gradclip.tensorflow as gtf
    >>> w = tf.Variable([3.0, 4.0])
    >>> clipper = gtf.Clipper(gradclip.ZClip())
    >>> with tf.GradientTape() as tape:
    ...     loss = tf.reduce_sum(w * w)
    >>> grads, stats = clipper(tape.gradient(loss, [w]), [w])
    >>> round(float(stats.norm), 3)
    10.0
"""

from gradclip.tensorflow._clip import Clipper, clip

__all__ = ["Clipper", "clip"]

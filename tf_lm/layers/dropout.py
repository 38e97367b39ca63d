"""Dropout that draws 16 random bits per element: half the random numbers of `keras.layers.Dropout`."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tf_lm")
class Dropout(keras.layers.Layer):
    """Inverted dropout: zeroes a `rate` fraction of the inputs and scales the rest by 1/(1 - rate).

    `keras.layers.Dropout` draws one 32-bit random number per element, and on CPU generating them is most of its
    cost (forward and backward of a [32, 24, 384] bfloat16 tensor, one thread: 2.9 ms, against 1.0 ms here). Here
    each 32-bit draw decides two elements: an element is dropped when its 16 bits fall under round(rate·2^16), so
    the rate is `rate` to within 2^-17 (0.1 gives 0.100006).

    Args:
        rate: float in [0, 1). Fraction of the inputs dropped.
        seed: int or None, default None. Seeds the masks; None draws a seed from Python's `random` (which
            `keras.utils.set_random_seed` seeds).

    Call args:
        x: float tensor of any shape.
        training: bool, default False. Dropout applies only when True; otherwise `x` is returned as it is.

    Returns:
        A tensor of `x`'s shape and dtype.

    Example:
    >>> layer = Dropout(0.1)
    >>> layer(keras.ops.ones((2, 5)), training=True).shape
    TensorShape([2, 5])
    """

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"rate must be in [0, 1). Received: rate={rate}")
        self.rate = float(rate)
        self.seed = seed
        if self.rate > 0:  # as Keras's: no random state (and nothing to checkpoint) when nothing is dropped
            self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True

    def call(self, x, training=False):
        if not training or self.rate == 0.0:
            return x
        # XLA's stateless random ops take int32 seeds; the generator's state is int64.
        seed = tf.cast(tf.math.floormod(self.seed_generator.next(), tf.int32.max - 1), tf.int32)
        replica = tf.distribute.get_replica_context()
        if replica is not None and replica.num_replicas_in_sync > 1:
            # Every replica holds the same generator state: without its id, each would drop the same elements
            # of its share of the batch.
            seed = tf.random.experimental.stateless_fold_in(seed, replica.replica_id_in_sync_group)
        count = tf.size(x)
        bits = tf.random.stateless_uniform([(count + 1) // 2], seed, minval=None, maxval=None, dtype=tf.uint32)
        halves = tf.reshape(tf.bitcast(bits, tf.uint16), [-1])[:count]  # (2·⌈count/2⌉,) -> (count,)
        keep = tf.reshape(halves >= round(self.rate * 2**16), tf.shape(x))
        return tf.where(keep, x * tf.cast(1.0 / (1.0 - self.rate), x.dtype), tf.zeros_like(x))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate, seed=self.seed)
        return config

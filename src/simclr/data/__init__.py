"""Data: datasets of uint8 images and the batches cut from them."""

from simclr.data.datasets import FileImages as FileImages
from simclr.data.datasets import ImageDataset as ImageDataset
from simclr.data.datasets import TensorImages as TensorImages
from simclr.data.datasets import array_dataset as array_dataset
from simclr.data.datasets import build_dataset as build_dataset
from simclr.data.loading import eval_batches as eval_batches
from simclr.data.loading import train_batches as train_batches

//! Reading and writing user tensors.

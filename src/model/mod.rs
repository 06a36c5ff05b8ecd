//! Trained vision transformers: manifest + safetensors loading, float and integer forward passes with taps.

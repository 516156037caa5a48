namespace Haven.Repository.Model;

/// <summary>What a blob holds. Persisted in pack headers and index files: never renumber.</summary>
public enum BlobType : byte
{
    Data = 0,
    Tree = 1,
}

/// <summary>Per-blob flags, persisted in pack headers and index files.</summary>
[Flags]
public enum BlobFlags : byte
{
    None = 0,

    /// <summary>The stored bytes are one zstd frame of the plaintext.</summary>
    Zstd = 1,
}

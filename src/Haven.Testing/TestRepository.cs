using Haven.Repository;
using Haven.Repository.Chunking;
using Haven.Repository.Crypto;
using Haven.Storage;

namespace Haven.Testing;

/// <summary>One-line working repositories for tests: cheap key derivation, small chunks and packs on request.</summary>
public static class TestRepository
{
    public const string Password = "test password";

    /// <summary>Small chunk sizes so that small test files still produce several chunks.</summary>
    public static ChunkerParameters SmallChunks { get; } = new(4 * 1024, 16 * 1024, 64 * 1024);

    public static Task<Haven.Repository.Repository> CreateAsync(IStore? store = null, ChunkerParameters? chunker = null, int compression = 3, TimeProvider? time = null) =>
        Haven.Repository.Repository.InitAsync(store ?? new MemoryStore(), Password,
            new RepositoryInitOptions { Kdf = KdfParameters.ForTests(), Chunker = chunker ?? ChunkerParameters.Default, Compression = compression }, time);

    /// <summary>Opens the repository again (as another process would) with its index loaded.</summary>
    public static async Task<Haven.Repository.Repository> ReopenAsync(IStore store, TimeProvider? time = null)
    {
        var repo = await Haven.Repository.Repository.OpenAsync(store, Password, time);
        await repo.LoadIndexAsync(CancellationToken.None);
        return repo;
    }
}

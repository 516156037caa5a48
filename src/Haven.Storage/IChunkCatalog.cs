using Haven.Core;

namespace Haven.Storage;

/// <summary>One pack and the blob ids in it, as a writer registers them with a <see cref="IChunkCatalog"/>.</summary>
public sealed record CatalogPack(ObjectId Pack, IReadOnlyList<ObjectId> Blobs);

/// <summary>
/// What a store may know beyond its files: which blob ids its repository already holds. A Haven server keeps such
/// a catalog per tenant, filled by every client of the tenant, so a writer can ask before it sends data and leave
/// out what another client sent already. Blob ids are keyed hashes of content: the catalog learns that two clients
/// stored the same chunk, never what the chunk holds.
/// <para>
/// The catalog is advice, not the repository's truth (that is the index): a writer registers a pack only once an
/// index file that names it is stored, so an id it answers for is always reachable through the repository's index.
/// A failed call costs deduplication, never data; callers treat an error as "nothing known".
/// </para>
/// </summary>
public interface IChunkCatalog
{
    /// <summary>The most ids one <see cref="FindKnownAsync"/> call takes.</summary>
    int MaxBatch { get; }

    /// <summary>The subset of <paramref name="ids"/> the repository holds.</summary>
    Task<IReadOnlySet<ObjectId>> FindKnownAsync(IReadOnlyList<ObjectId> ids, CancellationToken cancellationToken);

    /// <summary>Records packs an index file now names. Packs the store does not hold are ignored.</summary>
    Task RegisterAsync(IReadOnlyList<CatalogPack> packs, CancellationToken cancellationToken);
}

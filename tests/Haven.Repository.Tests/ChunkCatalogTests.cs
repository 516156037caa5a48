using Haven.Core;
using Haven.Repository.Model;
using Haven.Storage;
using Haven.Testing;
using Xunit;

namespace Haven.Repository.Tests;

/// <summary>
/// A writer asks the store's blob catalog (<see cref="IChunkCatalog"/>, as a Haven server keeps one per tenant) before
/// it uploads a pack, and leaves out what another writer stored since it loaded the index.
/// </summary>
public sealed class ChunkCatalogTests : IDisposable
{
    private readonly DirectoryInfo _spool = Directory.CreateTempSubdirectory("haven-catalog-");

    private static CancellationToken Ct => CancellationToken.None;

    public void Dispose() => _spool.Delete(recursive: true);

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task AWriterWithAStaleIndex_SendsOnlyWhatTheCatalogDoesNotHold(bool spool)
    {
        var store = new MemoryStore();
        var catalog = store.KeepCatalog();
        var first = await TestRepository.CreateAsync(store);
        var second = await TestRepository.ReopenAsync(store); // loads the index now, before the first writer stores anything
        var options = new BlobWriterOptions { SpoolDirectory = spool ? _spool.FullName : null };
        var shared = Enumerable.Range(0, 30).Select(i => TestData.Bytes(100_000 + i, seed: i)).ToList();
        var own = Enumerable.Range(100, 10).Select(i => TestData.Bytes(100_000 + i, seed: i)).ToList();

        await using (var writer = new BlobWriter(first, options))
        {
            foreach (var b in shared)
            {
                await writer.SaveAsync(BlobType.Data, first.Key.BlobId(b), b, Ct);
            }

            await writer.FlushAsync(Ct);
        }

        long bytesBefore = store.TotalBytes;
        await using (var writer = new BlobWriter(second, options))
        {
            // Interleaved, so the dropped blobs sit between kept ones in the same pack.
            foreach (var b in shared.SelectMany((b, i) => i % 3 == 0 ? new[] { b, own[i / 3] } : [b]))
            {
                await writer.SaveAsync(BlobType.Data, second.Key.BlobId(b), b, Ct);
            }

            await writer.FlushAsync(Ct);
            Assert.Equal(30, writer.BlobsFoundInCatalog);
            Assert.Equal(shared.Sum(b => (long)b.Length), writer.BytesFoundInCatalog);
            Assert.Equal(10, writer.BlobsAdded);
            Assert.Equal(own.Sum(b => (long)b.Length), writer.BytesAdded);
            Assert.Equal(0, writer.CatalogFailures);
            Assert.True(writer.IsKnown(second.Key.BlobId(shared[0])));
        }

        Assert.True(catalog.Queries > 0);
        // Only the new blobs travelled (random data does not compress): well under what all 40 would take.
        long added = store.TotalBytes - bytesBefore;
        Assert.InRange(added, own.Sum(b => (long)b.Length), own.Sum(b => (long)b.Length) + 64 * 1024);

        // Every blob is stored once and reads back, through the index of both writers.
        var reopened = await TestRepository.ReopenAsync(store);
        Assert.Equal(40, reopened.Index.All().Count());
        foreach (var b in shared.Concat(own))
        {
            Assert.Equal(b, await reopened.ReadBlobAsync(reopened.Key.BlobId(b), Ct));
        }

        Assert.Empty(_spool.EnumerateFiles());
    }

    [Fact]
    public async Task AFailingCatalog_CostsDeduplicationOnly()
    {
        var store = new MemoryStore();
        var repo = await TestRepository.CreateAsync(store);
        var faulty = new FaultyStore(store);
        faulty.FailCatalog();
        var viaFaulty = await TestRepository.ReopenAsync(faulty);
        var blobs = Enumerable.Range(0, 5).Select(i => TestData.Bytes(50_000, seed: i)).ToList();
        await using (var writer = new BlobWriter(viaFaulty))
        {
            foreach (var b in blobs)
            {
                await writer.SaveAsync(BlobType.Data, repo.Key.BlobId(b), b, Ct);
            }

            await writer.FlushAsync(Ct);
            Assert.Equal(5, writer.BlobsAdded);
            Assert.True(writer.CatalogFailures >= 2); // the question before the upload and the registration after the index
        }

        var reopened = await TestRepository.ReopenAsync(store);
        foreach (var b in blobs)
        {
            Assert.Equal(b, await reopened.ReadBlobAsync(repo.Key.BlobId(b), Ct));
        }
    }
}

using System.Diagnostics;
using Haven.Core;
using Haven.Repository.Crypto;
using Haven.Repository.Model;
using Haven.Repository.Packs;
using Haven.Storage;
using Haven.Testing;
using Xunit;

namespace Haven.Repository.Tests;

/// <summary>Packs built in a spool file instead of memory (<see cref="SpooledPackBuilder"/>, <see cref="BlobWriterOptions.SpoolDirectory"/>).</summary>
public sealed class PackSpoolTests : IDisposable
{
    private readonly DirectoryInfo _spool = Directory.CreateTempSubdirectory("haven-spool-");

    private static CancellationToken Ct => CancellationToken.None;

    public void Dispose() => _spool.Delete(recursive: true);

    [Fact]
    public void SpooledPack_HasTheBytesAndNameOfTheSamePackBuiltInMemory()
    {
        var aead = new Aead(new byte[32]);
        var memory = new PackBuilder(aead, 1024);
        using var spooled = new SpooledPackBuilder(aead, _spool.FullName);
        var random = new Random(7);
        for (int i = 0; i < 20; i++)
        {
            var stored = new byte[random.Next(1, 300_000)];
            random.NextBytes(stored);
            var id = new ObjectId(System.Security.Cryptography.SHA256.HashData(stored));
            memory.Add(id, BlobType.Data, BlobFlags.None, stored, stored.Length - 16);
            spooled.Add(id, BlobType.Data, BlobFlags.None, stored, stored.Length - 16);
        }

        long blobBytes = memory.Length;
        var (bytes, _) = memory.Finish();
        var (spooledName, size) = spooled.Finish();
        var file = File.ReadAllBytes(spooled.FilePath);

        // The sealed header has a fresh nonce, so the trailers differ; everything else is the same.
        Assert.Equal(new ObjectId(System.Security.Cryptography.SHA256.HashData(file)), spooledName);
        Assert.Equal(file.Length, size);
        Assert.Equal(bytes.Length, size);
        Assert.Equal(bytes[..(int)blobBytes].ToArray(), file[..(int)blobBytes]);
        Assert.Equal(memory.Blobs, spooled.Blobs);
    }

    [Fact]
    public async Task BlobWriter_WithASpool_StoresReadablePacks_AndLeavesNoSpoolFiles()
    {
        var store = new MemoryStore();
        var repo = await TestRepository.CreateAsync(store);
        var blobs = Enumerable.Range(0, 40).Select(i => TestData.Bytes(200_000 + i, seed: i)).ToList();
        await using (var writer = new BlobWriter(repo, new BlobWriterOptions { SpoolDirectory = _spool.FullName }))
        {
            foreach (var b in blobs)
            {
                Assert.True(await writer.SaveAsync(BlobType.Data, repo.Key.BlobId(b), b, Ct));
            }

            await writer.FlushAsync(Ct);
        }

        Assert.Empty(_spool.EnumerateFiles());
        var again = await TestRepository.ReopenAsync(store);
        foreach (var b in blobs)
        {
            Assert.Equal(b, await again.ReadBlobAsync(repo.Key.BlobId(b), Ct));
        }
    }

    [Fact]
    public async Task BlobWriter_ThatFails_LeavesNoSpoolFiles()
    {
        var faulty = new FaultyStore(new MemoryStore());
        var repo = await TestRepository.CreateAsync(faulty);
        faulty.RefusePuts(h => h.Kind == FileKind.Pack);
        var writer = new BlobWriter(repo, new BlobWriterOptions { SpoolDirectory = _spool.FullName });
        var blob = TestData.Bytes(100_000, seed: 1);
        await writer.SaveAsync(BlobType.Data, repo.Key.BlobId(blob), blob, Ct);

        await Assert.ThrowsAnyAsync<Exception>(() => writer.FlushAsync(Ct));
        await writer.DisposeAsync();

        Assert.Empty(_spool.EnumerateFiles());
    }

    [Fact]
    public void Sweep_DeletesSpoolFilesOfDeadProcesses_Only()
    {
        using var exited = Process.Start(new ProcessStartInfo("true"))!;
        exited.WaitForExit();
        string dead = Path.Combine(_spool.FullName, $"{SpooledPackBuilder.Prefix}{exited.Id}-00{SpooledPackBuilder.Suffix}");
        string alive = Path.Combine(_spool.FullName, $"{SpooledPackBuilder.Prefix}1-00{SpooledPackBuilder.Suffix}");
        string mine = Path.Combine(_spool.FullName, $"{SpooledPackBuilder.Prefix}{Environment.ProcessId}-00{SpooledPackBuilder.Suffix}");
        string other = Path.Combine(_spool.FullName, "not-a-spool-file");
        foreach (var f in new[] { dead, alive, mine, other })
        {
            File.WriteAllText(f, "x");
        }

        SpooledPackBuilder.SweepStale(_spool.FullName);

        Assert.False(File.Exists(dead));
        Assert.True(File.Exists(alive) && File.Exists(mine) && File.Exists(other));
    }
}

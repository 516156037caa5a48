using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using Haven.Core.Posix;
using Haven.Files.Backup;
using Haven.Files.Restore;
using Haven.Repository.Chunking;
using Haven.Repository.Crypto;
using Haven.Storage;
using Haven.Testing;
using Xunit;
using PosixCalls = Haven.Core.Posix.Posix;

namespace Haven.Files.Tests;

/// <summary>
/// Repositories written by earlier builds, checked in under tests/golden/, must stay readable by every later build:
/// each snapshot restores to exactly the entries its manifest lists. Regenerate only when the format version changes,
/// into a new folder (v2, …), keeping the old ones: <c>HAVEN_WRITE_GOLDEN=1 dotnet test --filter Golden</c>.
/// </summary>
public class GoldenRepositoryTests
{
    public const string Password = "golden repository";
    private const string SourcePath = "/tmp/haven-golden/src";

    private static string GoldenRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Haven.slnx")))
        {
            dir = dir.Parent;
        }

        return Path.Combine(dir!.FullName, "tests", "golden");
    }

    [Theory]
    [InlineData("v1")]
    public async Task GoldenRepository_RestoresExactlyItsManifest(string version)
    {
        var folder = Path.Combine(GoldenRoot(), version);
        var manifest = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "manifest.json")))!.AsObject();
        var repo = await Haven.Repository.Repository.OpenAsync(new LocalStore(Path.Combine(folder, "repo")), Password);
        await repo.LoadIndexAsync(CancellationToken.None);
        var snapshots = await repo.LoadSnapshotsAsync(CancellationToken.None);
        Assert.Equal(manifest.Count, snapshots.Count);

        var check = await new Haven.Repository.Checker(repo, new Haven.Repository.CheckOptions { ReadData = true }).RunAsync(CancellationToken.None);
        Assert.False(check.HasErrors, string.Join("\n", check.Problems));

        foreach (var (id, snapshot) in snapshots)
        {
            var target = Path.Combine(Path.GetTempPath(), "haven-golden-restore-" + Guid.NewGuid().ToString("N")[..8]);
            try
            {
                var result = await new Restorer(repo, new RestoreOptions { Target = target, Ownership = false }).RunAsync(snapshot.TreeId, CancellationToken.None);
                Assert.Empty(result.Errors);
                var expected = manifest[id.ToString()]!.ToJsonString();
                var actual = Describe(target + SourcePath).ToJsonString();
                Assert.Equal(expected, actual);
            }
            finally
            {
                PosixTree.Delete(target);
            }
        }
    }

    /// <summary>Writes tests/golden/v1 afresh. Runs only with HAVEN_WRITE_GOLDEN=1.</summary>
    [Fact]
    public async Task WriteGoldenRepository()
    {
        if (Environment.GetEnvironmentVariable("HAVEN_WRITE_GOLDEN") != "1")
        {
            return;
        }

        var folder = Path.Combine(GoldenRoot(), "v1");
        PosixTree.Delete(folder);
        PosixTree.Delete(SourcePath);
        Directory.CreateDirectory(SourcePath);
        MakeTree(SourcePath);

        var store = new LocalStore(Path.Combine(folder, "repo"));
        var repo = await Haven.Repository.Repository.InitAsync(store, Password, new Haven.Repository.RepositoryInitOptions
        {
            Kdf = KdfParameters.ForTests(),
            Chunker = TestRepository.SmallChunks,
        });
        var manifest = new JsonObject();
        var first = await new Archiver(repo, new BackupOptions { Paths = [SourcePath], Host = "golden", Tags = ["first"], CacheRoot = Path.Combine(folder, "..", ".cache") }).RunAsync(CancellationToken.None);
        manifest[first.SnapshotId!.Value.ToString()] = Describe(SourcePath);

        File.AppendAllText(Path.Combine(SourcePath, "docs", "readme.txt"), "A second line, added before the second snapshot.\n");
        File.SetLastWriteTimeUtc(Path.Combine(SourcePath, "docs", "readme.txt"), new DateTime(2026, 1, 2, 3, 4, 5, DateTimeKind.Utc));
        File.Delete(Path.Combine(SourcePath, "empty"));
        await repo.LoadIndexAsync(CancellationToken.None);
        var second = await new Archiver(repo, new BackupOptions { Paths = [SourcePath], Host = "golden", Tags = ["second"], CacheRoot = Path.Combine(folder, "..", ".cache") }).RunAsync(CancellationToken.None);
        manifest[second.SnapshotId!.Value.ToString()] = Describe(SourcePath);
        File.WriteAllText(Path.Combine(folder, "manifest.json"), manifest.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        PosixTree.Delete(Path.Combine(folder, "..", ".cache"));
        PosixTree.Delete("/tmp/haven-golden");
    }

    private static void MakeTree(string root)
    {
        Directory.CreateDirectory(Path.Combine(root, "docs"));
        Directory.CreateDirectory(Path.Combine(root, "bin"));
        Directory.CreateDirectory(Path.Combine(root, "empty-dir"));
        File.WriteAllText(Path.Combine(root, "docs", "readme.txt"), "Haven golden repository, format version 1.\n");
        File.WriteAllText(Path.Combine(root, "empty"), "");
        var random = new Random(42);
        var data = new byte[100_000];
        random.NextBytes(data);
        File.WriteAllBytes(Path.Combine(root, "bin", "random.bin"), data);
        File.WriteAllText(Path.Combine(root, "docs", "repeated.txt"), string.Concat(Enumerable.Repeat("compressible line of text\n", 4000)));
        File.SetUnixFileMode(Path.Combine(root, "bin", "random.bin"), (UnixFileMode)0x1ED); // 0755
        File.CreateSymbolicLink(Path.Combine(root, "link-to-readme"), "docs/readme.txt");
        PosixCalls.SetXattr(PosixPath.FromString(Path.Combine(root, "docs", "readme.txt")), "user.golden"u8.ToArray(), "yes"u8.ToArray());
        var time = new DateTime(2025, 6, 7, 8, 9, 10, DateTimeKind.Utc);
        foreach (var f in Directory.GetFileSystemEntries(root, "*", SearchOption.AllDirectories).Where(f => !File.ResolveLinkTarget(f, false)?.Exists ?? true))
        {
            File.SetLastWriteTimeUtc(f, time);
        }
    }

    /// <summary>Every entry below <paramref name="root"/>: type, mode, size, content hash, link target, xattrs, mtime.</summary>
    private static JsonArray Describe(string root)
    {
        var entries = new JsonArray();
        foreach (var path in Directory.GetFileSystemEntries(root, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal))
        {
            var bytes = PosixPath.FromString(path);
            var st = PosixCalls.LStat(bytes);
            var entry = new JsonObject
            {
                ["path"] = Path.GetRelativePath(root, path),
                ["type"] = st.Type.ToString(),
                ["mode"] = st.Type == FileType.Symlink ? 0 : st.Mode,
                ["size"] = st.Type == FileType.Regular ? st.Size : 0,
                ["mtime_ns"] = st.Type == FileType.Symlink ? 0 : st.ModifyTimeNs,
            };
            if (st.Type == FileType.Regular)
            {
                entry["sha256"] = Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(path)));
            }

            if (st.Type == FileType.Symlink)
            {
                entry["target"] = PosixPath.ToDisplay(PosixCalls.ReadLink(bytes));
            }

            var xattrs = PosixCalls.ListXattrs(bytes).Where(n => n.AsSpan().StartsWith("user."u8)).Select(n => PosixPath.ToDisplay(n) + "=" + PosixPath.ToDisplay(PosixCalls.GetXattr(bytes, n) ?? [])).Order().ToArray();
            if (xattrs.Length > 0)
            {
                entry["xattrs"] = new JsonArray(xattrs.Select(x => (JsonNode)JsonValue.Create(x)!).ToArray());
            }

            entries.Add(entry);
        }

        return entries;
    }
}

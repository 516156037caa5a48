using Haven.Core;
using Haven.Core.Posix;
using Haven.Repository.Chunking;
using Haven.Repository.Crypto;
using Haven.Repository.Index;
using Haven.Repository.Model;
using Haven.Repository.Packs;
using Haven.Storage;
using Xunit;

namespace Haven.Repository.Tests;

/// <summary>
/// Every number and string that reaches disk, pinned. A failure here means the repository format changed:
/// update docs/design/repository-format.md, bump the version, and keep reading the old one.
/// </summary>
public class FormatConstantsTests
{
    [Fact]
    public void BlobTypesAndFlagsKeepTheirNumbers()
    {
        Assert.Equal(0, (int)BlobType.Data);
        Assert.Equal(1, (int)BlobType.Tree);
        Assert.Equal(0, (int)BlobFlags.None);
        Assert.Equal(1, (int)BlobFlags.Zstd);
    }

    [Fact]
    public void FileTypesKeepTheirNumbers()
    {
        Assert.Equal(
            [0, 1, 2, 3, 4, 5, 6, 7],
            new[] { FileType.Unknown, FileType.Regular, FileType.Directory, FileType.Symlink, FileType.CharDevice, FileType.BlockDevice, FileType.Fifo, FileType.Socket }.Select(t => (int)t));
    }

    [Fact]
    public void TreeTagsKeepTheirNumbers()
    {
        var expected = new Dictionary<TreeCodec.Tag, int>
        {
            [TreeCodec.Tag.Name] = 1, [TreeCodec.Tag.Type] = 2, [TreeCodec.Tag.Mode] = 3, [TreeCodec.Tag.Uid] = 4,
            [TreeCodec.Tag.Gid] = 5, [TreeCodec.Tag.User] = 6, [TreeCodec.Tag.Group] = 7, [TreeCodec.Tag.Size] = 8,
            [TreeCodec.Tag.ModifyTime] = 9, [TreeCodec.Tag.AccessTime] = 10, [TreeCodec.Tag.ChangeTime] = 11,
            [TreeCodec.Tag.Inode] = 12, [TreeCodec.Tag.Device] = 13, [TreeCodec.Tag.Links] = 14, [TreeCodec.Tag.Content] = 15,
            [TreeCodec.Tag.Subtree] = 16, [TreeCodec.Tag.LinkTarget] = 17, [TreeCodec.Tag.RDev] = 18, [TreeCodec.Tag.Xattr] = 19,
        };
        Assert.Equal(expected.Count, Enum.GetValues<TreeCodec.Tag>().Length);
        foreach (var (tag, number) in expected)
        {
            Assert.Equal(number, (int)tag);
        }
    }

    [Fact]
    public void MagicsVersionsAndAssociatedDataAreFixed()
    {
        Assert.Equal("HVNP"u8.ToArray(), PackFormat.HeaderMagic.ToArray());
        Assert.Equal("HVNI"u8.ToArray(), IndexFile.Magic.ToArray());
        Assert.Equal(1, PackFormat.HeaderVersion);
        Assert.Equal(1, IndexFile.Version);
        Assert.Equal(1, TreeCodec.Version);
        Assert.Equal(1, RepositoryConfig.CurrentVersion);
        Assert.Equal(1, Snapshot.CurrentVersion);
        Assert.Equal(1, KeyFile.CurrentVersion);
        Assert.Equal(42, PackFormat.EntrySize);
        Assert.Equal("haven pack header v1"u8.ToArray(), PackFormat.HeaderAssociatedData);
        Assert.Equal("haven index v1"u8.ToArray(), SealedFile.AssociatedData("index"));
        Assert.Equal("haven snapshot v1"u8.ToArray(), SealedFile.AssociatedData("snapshot"));
        Assert.Equal("haven lock v1"u8.ToArray(), SealedFile.AssociatedData("lock"));
        Assert.Equal(12, Aead.NonceLength);
        Assert.Equal(16, Aead.TagLength);
    }

    [Fact]
    public void DefaultsAreTheDocumentedOnes()
    {
        Assert.Equal(new ChunkerParameters(512 * 1024, 1024 * 1024, 8 * 1024 * 1024), ChunkerParameters.Default);
        Assert.Equal(16 * 1024 * 1024, RepositoryConfig.DefaultPackSize);
        var kdf = KdfParameters.DefaultArgon2id();
        Assert.Equal(("argon2id", 65536L, 3L, 1), (kdf.Algorithm, kdf.MemoryKiB, kdf.Iterations, kdf.Parallelism));
        Assert.Equal(16, kdf.Salt.Length);
    }

    [Fact]
    public void StoreLayoutIsFixed()
    {
        var id = new string('a', 62) + "0f";
        Assert.Equal("config", StoreLayout.PathOf(StoreHandle.Config));
        Assert.Equal($"data/aa/{id}", StoreLayout.PathOf(new StoreHandle(FileKind.Pack, id)));
        Assert.Equal($"index/{id}", StoreLayout.PathOf(new StoreHandle(FileKind.Index, id)));
        Assert.Equal($"snapshots/{id}", StoreLayout.PathOf(new StoreHandle(FileKind.Snapshot, id)));
        Assert.Equal($"keys/{id}", StoreLayout.PathOf(new StoreHandle(FileKind.Key, id)));
        Assert.Equal($"locks/{id}", StoreLayout.PathOf(new StoreHandle(FileKind.Lock, id)));
    }

    [Fact]
    public void ExitCodesAreTheDocumentedOnes()
    {
        Assert.Equal(
            [0, 1, 2, 3, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 130],
            new[]
            {
                ExitCodes.Success, ExitCodes.Failed, ExitCodes.Usage, ExitCodes.PartialBackup, ExitCodes.RepositoryNotFound,
                ExitCodes.LockConflict, ExitCodes.WrongPassword, ExitCodes.UnsupportedFormat, ExitCodes.Corrupt, ExitCodes.NoSpace,
                ExitCodes.SourceNotFound, ExitCodes.NotFound, ExitCodes.AccessDenied, ExitCodes.Unavailable, ExitCodes.RepositoryExists,
                ExitCodes.Interrupted,
            });
    }

    [Fact]
    public void GearTableDependsOnlyOnTheKey()
    {
        var key = Enumerable.Range(0, 32).Select(i => (byte)i).ToArray();
        var table = ContentDefinedChunker.DeriveGearTable(key);
        // Pinned: HMAC-SHA256(key 00..1f, "haven gear" ‖ 00), first 8 bytes little-endian.
        var mac = System.Security.Cryptography.HMACSHA256.HashData(key, (byte[])[.. "haven gear"u8, 0]);
        Assert.Equal(BitConverter.ToUInt64(mac, 0), table[0]);
        Assert.Equal(256, table.Length);
        Assert.Equal(256, table.Distinct().Count());
    }
}

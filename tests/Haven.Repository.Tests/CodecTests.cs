using Haven.Core;
using Haven.Core.Posix;
using Haven.Repository.Crypto;
using Haven.Repository.Index;
using Haven.Repository.Model;
using Haven.Repository.Packs;
using Xunit;

namespace Haven.Repository.Tests;

public class CodecTests
{
    private static ObjectId Id(int seed)
    {
        var b = new byte[32];
        new Random(seed).NextBytes(b);
        return new ObjectId(b);
    }

    private static List<Node> SampleTree() =>
    [
        new Node { Name = "a.txt"u8.ToArray(), Type = FileType.Regular, Mode = 0644, Uid = 1000, Gid = 1000, User = "u", Group = "g", Size = 5, ModifyTimeNs = -1_234_567_891, ChangeTimeNs = 42, Inode = 7, Links = 1, Content = [Id(1), Id(2)] },
        new Node { Name = [0x62, 0xff], Type = FileType.Symlink, LinkTarget = [0x2f, 0xfe], Mode = 0777 },
        new Node { Name = "dir"u8.ToArray(), Type = FileType.Directory, Mode = 0700, Subtree = Id(3), Xattrs = [new Xattr("user.k"u8.ToArray(), [0, 1, 2])] },
        new Node { Name = "null"u8.ToArray(), Type = FileType.CharDevice, RDev = 259, Mode = 0666 },
    ];

    [Fact]
    public void TreesRoundTrip()
    {
        var nodes = SampleTree();
        var decoded = TreeCodec.Decode(TreeCodec.Encode(nodes));
        Assert.Equal(nodes.Count, decoded.Count);
        for (int i = 0; i < nodes.Count; i++)
        {
            var (e, a) = (nodes[i], decoded[i]);
            Assert.Equal(e.Name, a.Name);
            Assert.Equal((e.Type, e.Mode, e.Uid, e.Gid, e.User, e.Group, e.Size, e.ModifyTimeNs, e.ChangeTimeNs, e.Inode, e.Links, e.RDev, e.Subtree),
                (a.Type, a.Mode, a.Uid, a.Gid, a.User, a.Group, a.Size, a.ModifyTimeNs, a.ChangeTimeNs, a.Inode, a.Links, a.RDev, a.Subtree));
            Assert.Equal(e.Content ?? [], a.Content ?? []);
            Assert.Equal(e.LinkTarget, a.LinkTarget);
            Assert.Equal(e.Xattrs?.Select(x => (Convert.ToHexString(x.Name), Convert.ToHexString(x.Value))), a.Xattrs?.Select(x => (Convert.ToHexString(x.Name), Convert.ToHexString(x.Value))));
        }
    }

    [Theory]
    [InlineData("..")]
    [InlineData(".")]
    [InlineData("a/b")]
    [InlineData("")]
    public void TreesWithUnsafeNamesAreRefused(string name)
    {
        var bytes = TreeCodec.Encode([new Node { Name = System.Text.Encoding.UTF8.GetBytes(name), Type = FileType.Regular }]);
        Assert.Throws<MalformedDataException>(() => TreeCodec.Decode(bytes));
    }

    [Fact]
    public void TreesWithDuplicateNamesAreRefused()
    {
        var bytes = TreeCodec.Encode([new Node { Name = "x"u8.ToArray(), Type = FileType.Regular }, new Node { Name = "x"u8.ToArray(), Type = FileType.Directory }]);
        Assert.Throws<MalformedDataException>(() => TreeCodec.Decode(bytes));
    }

    [Fact]
    public void IndexFilesRoundTrip()
    {
        var file = new IndexFile();
        file.Supersedes.Add(Id(9));
        file.Packs.Add(new IndexedPack(Id(10), [new PackedBlob(Id(11), BlobType.Data, BlobFlags.Zstd, 0, 100, 300), new PackedBlob(Id(12), BlobType.Data, BlobFlags.None, 100, 50, 22)]));
        var decoded = IndexFile.Decode(file.Encode());
        Assert.Equal(file.Supersedes, decoded.Supersedes);
        Assert.Equal(file.Packs[0].Pack, decoded.Packs[0].Pack);
        Assert.Equal(file.Packs[0].Blobs, decoded.Packs[0].Blobs);
    }

    /// <summary>Fuzz-style: random truncations and byte flips of valid encodings never escape as anything but MalformedDataException.</summary>
    [Fact]
    public void ParsersOfUntrustedBytesFailCleanly()
    {
        var tree = TreeCodec.Encode(SampleTree());
        var index = new IndexFile { Packs = { new IndexedPack(Id(1), [new PackedBlob(Id(2), BlobType.Tree, BlobFlags.None, 0, 40, 12)]) } }.Encode();
        var aead = new Aead(new byte[32]);
        var builder = new PackBuilder(aead, 1024);
        builder.Add(Id(5), BlobType.Data, BlobFlags.None, new byte[40], 12);
        var header = new WireWriter();
        header.Raw("HVNP"u8);
        header.Byte(1);
        header.UInt32(1);
        header.Byte(0);
        header.Byte(0);
        header.UInt32(40);
        header.UInt32(12);
        header.Id(Id(5));
        var headerBytes = header.WrittenSpan.ToArray();
        var rng = new Random(1);
        for (int round = 0; round < 3000; round++)
        {
            foreach (var (original, parse) in new (byte[], Action<byte[]>)[]
            {
                (tree, b => TreeCodec.Decode(b)),
                (index, b => IndexFile.Decode(b)),
                (headerBytes, b => PackFormat.ParseHeader(b, 40)),
            })
            {
                var mutated = original.ToArray();
                switch (rng.Next(3))
                {
                    case 0:
                        mutated = mutated[..rng.Next(mutated.Length)];
                        break;
                    case 1:
                        for (int k = rng.Next(1, 4); k > 0; k--)
                        {
                            mutated[rng.Next(mutated.Length)] ^= (byte)(1 << rng.Next(8));
                        }

                        break;
                    default:
                        mutated[rng.Next(mutated.Length)] = (byte)rng.Next(256);
                        break;
                }

                try
                {
                    parse(mutated);
                }
                catch (MalformedDataException)
                {
                }
            }
        }
    }

    [Fact]
    public void SealedDataDetectsTamperingAndWrongContext()
    {
        var aead = new Aead(Enumerable.Repeat((byte)7, 32).ToArray());
        var sealedBytes = aead.Seal("hello"u8, "ctx"u8);
        Assert.Equal("hello"u8.ToArray(), aead.TryOpen(sealedBytes, "ctx"u8));
        Assert.Null(aead.TryOpen(sealedBytes, "other"u8));
        sealedBytes[15] ^= 1;
        Assert.Null(aead.TryOpen(sealedBytes, "ctx"u8));
        Assert.Null(new Aead(new byte[32]).TryOpen(aead.Seal("x"u8, "ctx"u8), "ctx"u8));
    }

    [Fact]
    public void BlobCodecCompressesWhenItHelpsAndBindsTheId()
    {
        var codec = new BlobCodec(new Aead(new byte[32]), 3);
        var text = System.Text.Encoding.ASCII.GetBytes(string.Concat(Enumerable.Repeat("compressible text ", 2000)));
        var (buffer, length, flags) = codec.Encode(BlobType.Data, Id(1), text, new EncodeScratch());
        Assert.Equal(BlobFlags.Zstd, flags);
        Assert.True(length < text.Length / 4);
        var blob = new PackedBlob(Id(1), BlobType.Data, flags, 0, length, text.Length);
        var plain = new byte[text.Length];
        Assert.True(codec.TryDecode(blob, buffer.AsSpan(0, length), plain));
        Assert.Equal(text, plain);
        Assert.False(codec.TryDecode(blob with { Id = Id(2) }, buffer.AsSpan(0, length), plain));
        Assert.False(codec.TryDecode(blob with { Type = BlobType.Tree }, buffer.AsSpan(0, length), plain));

        var noise = new byte[300_000];
        new Random(5).NextBytes(noise);
        var (_, noiseLength, noiseFlags) = codec.Encode(BlobType.Data, Id(3), noise, new EncodeScratch());
        Assert.Equal(BlobFlags.None, noiseFlags);
        Assert.Equal(noise.Length + Aead.Overhead, noiseLength);
    }

    [Fact]
    public void KeyFilesOpenOnlyWithTheirPassword()
    {
        var master = MasterKey.Generate();
        var file = KeyFile.Create(master, "right", KdfParameters.ForTests(), DateTimeOffset.UnixEpoch);
        var parsed = KeyFile.Parse(file.Serialize(), "k");
        Assert.Null(parsed.TryOpen("wrong"));
        var opened = parsed.TryOpen("right");
        Assert.NotNull(opened);
        Assert.Equal(master.EncryptionKey, opened.EncryptionKey);
        Assert.Equal(master.IdKey, opened.IdKey);
        Assert.Equal(master.ChunkerKey, opened.ChunkerKey);
    }

    [Fact]
    public void Pbkdf2KeyFilesOpenToo()
    {
        var master = MasterKey.Generate();
        var kdf = new KdfParameters { Algorithm = KdfParameters.Pbkdf2Sha256, Iterations = 600_000, Salt = new byte[16] };
        var file = KeyFile.Create(master, "pw", kdf, DateTimeOffset.UnixEpoch);
        Assert.Equal(master.IdKey, KeyFile.Parse(file.Serialize(), "k").TryOpen("pw")!.IdKey);
    }
}

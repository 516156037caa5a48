using Haven.Core;
using Haven.Repository.Model;
using Haven.Repository.Packs;

namespace Haven.Repository.Index;

/// <summary>The packs one index file describes.</summary>
public sealed record IndexedPack(ObjectId Pack, IReadOnlyList<PackedBlob> Blobs);

/// <summary>
/// An index file (normative: docs/design/repository-format.md, "Index files"), sealed with kind "index":
/// <c>"HVNI" ‖ version ‖ supersedes ‖ packs</c>. Binary because index files are read on every command and
/// a repository of a few TiB holds millions of entries.
/// </summary>
public sealed class IndexFile
{
    public static ReadOnlySpan<byte> Magic => "HVNI"u8;

    public const byte Version = 1;

    public List<ObjectId> Supersedes { get; } = [];

    public List<IndexedPack> Packs { get; } = [];

    public int BlobCount => Packs.Sum(p => p.Blobs.Count);

    /// <summary>Blobs per index file a replacement index is split into: about 2.5 MB per file.</summary>
    public const int DefaultMaxBlobsPerFile = 50_000;

    /// <summary>
    /// The files of an index that replaces <paramref name="superseded"/> (format §8): <paramref name="packs"/> split
    /// into files of at most <paramref name="maxBlobsPerFile"/> blobs, where only the <em>last</em> file lists the
    /// superseded ones. Written in order, readers switch over in one step when the last file appears; before that
    /// the new files merely duplicate live entries. With no pack left, one empty file still carries the list.
    /// </summary>
    public static List<IndexFile> Replacement(IEnumerable<IndexedPack> packs, IReadOnlyCollection<ObjectId> superseded, int maxBlobsPerFile = DefaultMaxBlobsPerFile)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxBlobsPerFile, 1);
        var files = new List<IndexFile>();
        int blobs = 0;
        foreach (var pack in packs)
        {
            if (files.Count == 0 || (blobs > 0 && blobs + pack.Blobs.Count > maxBlobsPerFile))
            {
                files.Add(new IndexFile());
                blobs = 0;
            }

            files[^1].Packs.Add(pack);
            blobs += pack.Blobs.Count;
        }

        if (superseded.Count > 0)
        {
            if (files.Count == 0)
            {
                files.Add(new IndexFile());
            }

            files[^1].Supersedes.AddRange(superseded.Order());
        }

        return files;
    }

    public byte[] Encode()
    {
        var w = new WireWriter(64 + (BlobCount * 48));
        w.Raw(Magic);
        w.Byte(Version);
        w.VarUInt((ulong)Supersedes.Count);
        foreach (var id in Supersedes)
        {
            w.Id(id);
        }

        w.VarUInt((ulong)Packs.Count);
        foreach (var pack in Packs)
        {
            w.Id(pack.Pack);
            w.VarUInt((ulong)pack.Blobs.Count);
            foreach (var b in pack.Blobs)
            {
                w.Byte((byte)b.Type);
                w.Byte((byte)b.Flags);
                w.VarUInt((ulong)b.Offset);
                w.VarUInt((ulong)b.Length);
                w.VarUInt((ulong)b.RawLength);
                w.Id(b.Id);
            }
        }

        return w.WrittenSpan.ToArray();
    }

    /// <summary>Parses a decrypted index file; throws <see cref="MalformedDataException"/>.</summary>
    public static IndexFile Decode(ReadOnlySpan<byte> data)
    {
        var r = new WireReader(data);
        if (!r.Raw(4).SequenceEqual(Magic))
        {
            WireReader.Fail("index magic is wrong");
        }

        byte version = r.Byte();
        if (version != Version)
        {
            WireReader.Fail($"index version {version} is unknown");
        }

        var file = new IndexFile();
        int supersedes = r.Count(r.Remaining / ObjectId.Size);
        for (int i = 0; i < supersedes; i++)
        {
            file.Supersedes.Add(r.Id());
        }

        int packs = r.Count(r.Remaining / ObjectId.Size);
        for (int p = 0; p < packs; p++)
        {
            var packId = r.Id();
            int count = r.Count(Math.Min(PackFormat.MaxEntries, r.Remaining / 37));
            var blobs = new List<PackedBlob>(count);
            for (int i = 0; i < count; i++)
            {
                var type = (BlobType)r.Byte();
                var flags = (BlobFlags)r.Byte();
                ulong offset = r.VarUInt();
                ulong length = r.VarUInt();
                ulong raw = r.VarUInt();
                var id = r.Id();
                if (type is not (BlobType.Data or BlobType.Tree) || (flags & ~BlobFlags.Zstd) != 0 || offset > int.MaxValue || length > int.MaxValue || raw > int.MaxValue)
                {
                    WireReader.Fail($"index entry {i} of pack {packId.Short} is invalid");
                }

                blobs.Add(new PackedBlob(id, type, flags, (long)offset, (int)length, (int)raw));
            }

            file.Packs.Add(new IndexedPack(packId, blobs));
        }

        if (!r.AtEnd)
        {
            WireReader.Fail("trailing bytes after the last pack");
        }

        return file;
    }
}

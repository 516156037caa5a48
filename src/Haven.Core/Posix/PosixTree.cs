namespace Haven.Core.Posix;

/// <summary>Operations on whole trees through the byte-path layer (names need not be UTF-8).</summary>
public static class PosixTree
{
    /// <summary>Removes <paramref name="root"/> and everything below it, without following symlinks. Missing is fine.</summary>
    public static void Delete(string root)
    {
        byte[] r = PosixPath.FromString(Path.GetFullPath(root));
        if (Posix.TryLStat(r, out _, out _))
        {
            Delete(r);
        }
    }

    private static void Delete(byte[] path)
    {
        if (Posix.LStat(path).Type != FileType.Directory)
        {
            Posix.Unlink(path);
            return;
        }

        if (!Posix.IsRoot)
        {
            Posix.Chmod(path, 0x1C0); // 0700: a read-only directory's entries can be removed only after this
        }

        foreach (byte[] name in Posix.ReadDirectory(path))
        {
            Delete(PosixPath.Join(path, name));
        }

        Posix.RemoveDirectory(path);
    }
}

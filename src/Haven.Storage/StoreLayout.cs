namespace Haven.Storage;

/// <summary>
/// Where each file of a repository lives inside a store. Every store uses this one layout, so a repository can be
/// copied between stores with ordinary tools (normative: docs/design/repository-format.md, "Layout").
/// </summary>
public static class StoreLayout
{
    public static string FolderOf(FileKind kind) => kind switch
    {
        FileKind.Config => "",
        FileKind.Key => "keys",
        FileKind.Pack => "data",
        FileKind.Index => "index",
        FileKind.Snapshot => "snapshots",
        FileKind.Lock => "locks",
        _ => throw new ArgumentOutOfRangeException(nameof(kind)),
    };

    /// <summary>Relative path with '/' separators, e.g. <c>data/3f/3f0a…</c>.</summary>
    public static string PathOf(StoreHandle handle)
    {
        ValidateName(handle);
        return handle.Kind switch
        {
            FileKind.Config => "config",
            FileKind.Pack => $"data/{handle.Name[..2]}/{handle.Name}",
            _ => $"{FolderOf(handle.Kind)}/{handle.Name}",
        };
    }

    /// <summary>
    /// Names are 64 lower-case hex digits (or "config"). Anything else is refused, so a hostile listing or a
    /// bad argument can never address a path outside the repository.
    /// </summary>
    public static void ValidateName(StoreHandle handle)
    {
        if (handle.Kind == FileKind.Config)
        {
            if (handle.Name != "config")
            {
                throw new ArgumentException($"the config file is named 'config', not '{handle.Name}'");
            }

            return;
        }

        if (!IsValidName(handle.Name))
        {
            throw new ArgumentException($"'{handle.Name}' is not a valid repository file name (64 lower-case hex digits)");
        }
    }

    public static bool IsValidName(string name)
    {
        if (name.Length != 64)
        {
            return false;
        }

        foreach (char c in name)
        {
            if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            {
                return false;
            }
        }

        return true;
    }
}
